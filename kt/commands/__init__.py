"""``caffekt kt ...`` and ``caffekt demo``: the knowledge-transfer subcommands, registered in
the ``caffekt.commands`` entry-point group (setup.cfg)."""
