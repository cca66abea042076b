"""``caffekt export`` and ``caffekt convert``, registered in the ``caffekt.commands`` entry-point
group (setup.cfg)."""
