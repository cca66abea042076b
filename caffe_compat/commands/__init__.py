"""``caffe_compat``'s own subcommands (inspect, upgrade, parity, train, plot), one module each,
registered in the ``caffekt.commands`` entry-point group (setup.cfg) like those of
``caffekt.kt`` and ``caffekt.converters``."""
