"""Draw the example images in examples/ (what the README's commands ask about)."""

from __future__ import annotations

from pathlib import Path

from vlmctl.demo.shapes import Scene, Shape, render

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TWO = (Shape("circle", "red", 0.27, 0.5, 0.17, 0.0), Shape("square", "blue", 0.73, 0.47, 0.15, 6.0))
SCENES = {
    "shapes.png": Scene(TWO, "plain", 1),
    "shapes_changed.png": Scene((TWO[0], Shape("square", "green", 0.73, 0.47, 0.15, 6.0)), "plain", 1),
    "three.jpg": Scene((Shape("triangle", "green", 0.18, 0.55, 0.12, -5.0), Shape("star", "yellow", 0.5, 0.45, 0.13, 8.0),
                        Shape("circle", "purple", 0.83, 0.52, 0.11, 0.0)), "gradient", 7),
}


def main() -> None:
    for name, scene in SCENES.items():
        image = render(scene, (640, 480) if name.endswith(".png") else (800, 600))
        image.save(EXAMPLES / name, quality=90)
        print(EXAMPLES / name, "-", scene.describe())


if __name__ == "__main__":
    main()
