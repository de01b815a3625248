"""Runtime hook: make sounddevice load the PortAudio library bundled with the app.

sounddevice asks `ctypes.util.find_library("portaudio")` first. On Linux that consults the
system's linker cache, so a machine without libportaudio2 fails although the bundle carries
it; on an Intel Mac it may find a Homebrew copy in /usr/local/lib before the bundled one.
Answer that one question with the bundled file; every other lookup is unchanged.
"""

import ctypes.util
import glob
import os
import sys


def _bundled_portaudio():
    base = getattr(sys, "_MEIPASS", None)
    if base is None:
        return None
    for pattern in ("libportaudio.so*", "libportaudio*.dylib",
                    os.path.join("_sounddevice_data", "portaudio-binaries", "libportaudio*")):
        found = sorted(glob.glob(os.path.join(base, pattern)))
        if found:
            return found[0]
    return None


def _install():
    bundled = _bundled_portaudio()
    if bundled is None:
        return
    original = ctypes.util.find_library

    def find_library(name):
        if name == "portaudio":
            return bundled
        return original(name)

    ctypes.util.find_library = find_library


_install()
