"""Incremental detokenization with stop strings.

Text is released only once it is final: never half of a multi-byte character (a decode
that ends in U+FFFD waits for the next token), and never the start of what may become a
stop string. A matched stop string ends the text and is not part of it.
"""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: list[str] | None = None, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.text = ""
        self.matched_stop: str | None = None
        self._prefix_offset = 0
        self._read_offset = 0
        self._emitted = 0

    @property
    def stopped(self) -> bool:
        return self.matched_stop is not None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_ids: list[int], final: bool = False) -> str:
        """Feed new tokens; return the text that is now safe to show (may be empty)."""
        if self.stopped:
            return ""
        self.token_ids.extend(token_ids)
        prefix_text = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self.token_ids[self._prefix_offset :])
        if len(full_text) > len(prefix_text) and (final or not full_text.endswith("\ufffd")):
            search_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
            self.text += full_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.token_ids)
            self._find_stop(search_from)
        if self.stopped or final:
            upto = len(self.text)
        else:
            upto = len(self.text) - self._held_back()
        delta = self.text[self._emitted : upto]
        self._emitted = max(self._emitted, upto)
        return delta

    def _find_stop(self, search_from: int) -> None:
        best: tuple[int, str] | None = None
        for stop in self.stop:
            index = self.text.find(stop, search_from)
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is not None:
            self.text = self.text[: best[0]]
            self.matched_stop = best[1]

    def _held_back(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        held = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:n]):
                    held = n
                    break
        return held
