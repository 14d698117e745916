import os
import sys

# test helper modules (x86util, qemu_serial) live next to the tests
sys.path.insert(0, os.path.dirname(__file__))
