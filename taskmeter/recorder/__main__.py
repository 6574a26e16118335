import gc

# What the recorder loads at start lives as long as it does: the collector's passes over it
# while it loads, and at exit, were a tenth of its start's CPU (as for `meter proxy`, cli/proxy.py).
gc.disable()
from taskmeter.recorder.loop import main  # noqa: E402

gc.freeze()
gc.enable()
main()
