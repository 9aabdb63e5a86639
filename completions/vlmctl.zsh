
#compdef vlmctl

_vlmctl_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _VLMCTL_COMPLETE=complete_zsh vlmctl)
}

compdef _vlmctl_completion vlmctl
