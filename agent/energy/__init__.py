"""Local energy management (issue 15): the site grid limit, load sharing between connectors, solar
surplus and the failsafe when the site meter goes silent. Runs on the control side (the fuse is
safety). ``allocator`` and ``solar`` are pure (no I/O, no clock); ``site`` is the controller task."""
