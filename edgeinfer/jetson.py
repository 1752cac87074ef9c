"""What a Jetson says about itself: model, L4T and JetPack release, power mode.

Every JetPack image carries the same few files, read here without running
anything (``nvpmodel -q`` needs root on some releases):

* ``/proc/device-tree/model``: the module, e.g. ``NVIDIA Jetson Nano Developer Kit``
  (NUL-terminated);
* ``/etc/nv_tegra_release``: the L4T release, e.g.
  ``# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, ...``
  is L4T 32.7.1, which JetPack 4.6.1 ships;
* ``/var/lib/nvpmodel/status`` (``pmode:0000``) and ``/etc/nvpmodel.conf``
  (``< POWER_MODEL ID=0 NAME=MAXN >``): the power mode the board runs in;
* cpufreq's and the GPU's devfreq ``min``/``max`` clocks: ``jetson_clocks`` raises
  each minimum to its maximum (:func:`read_clocks`).

The L4T -> JetPack -> TensorRT/CUDA table is NVIDIA's JetPack release notes, kept
as data.  Every reader takes a ``root`` (default ``/``) so tests point it at a
fixture tree.

Device side: standard library only, Python 3.6 syntax.
"""

import glob
import os
import re
from typing import NamedTuple, Optional


class JetPack(NamedTuple):
    """One JetPack release: what it ships.

    Attributes:
        jetpack: the JetPack version, e.g. ``"4.6.1"``.
        tensorrt: its TensorRT, e.g. ``"8.2.1"``.
        cuda: its CUDA, e.g. ``"10.2"``.
        python: its system Python 3, e.g. ``"3.6"``.
    """

    jetpack: str
    tensorrt: str
    cuda: str
    python: str


# L4T release -> JetPack (NVIDIA's JetPack archive and release notes).  JetPack 4.6
# itself shipped TensorRT 8.0.1; 4.6.1 and later 4.6.x ship 8.2.1.
L4T_RELEASES = {
    "32.4.3": JetPack("4.4", "7.1.3", "10.2", "3.6"),
    "32.4.4": JetPack("4.4.1", "7.1.3", "10.2", "3.6"),
    "32.5.0": JetPack("4.5", "7.1.3", "10.2", "3.6"),
    "32.5.1": JetPack("4.5.1", "7.1.3", "10.2", "3.6"),
    "32.6.1": JetPack("4.6", "8.0.1", "10.2", "3.6"),
    "32.7.1": JetPack("4.6.1", "8.2.1", "10.2", "3.6"),
    "32.7.2": JetPack("4.6.2", "8.2.1", "10.2", "3.6"),
    "32.7.3": JetPack("4.6.3", "8.2.1", "10.2", "3.6"),
    "32.7.4": JetPack("4.6.4", "8.2.1", "10.2", "3.6"),
    "32.7.5": JetPack("4.6.5", "8.2.1", "10.2", "3.6"),
    "32.7.6": JetPack("4.6.6", "8.2.1", "10.2", "3.6"),
    "35.1.0": JetPack("5.0.2", "8.4.1", "11.4", "3.8"),
    "35.2.1": JetPack("5.1", "8.5.2", "11.4", "3.8"),
    "35.3.1": JetPack("5.1.1", "8.5.2", "11.4", "3.8"),
    "35.4.1": JetPack("5.1.2", "8.5.2", "11.4", "3.8"),
    "35.5.0": JetPack("5.1.3", "8.5.2", "11.4", "3.8"),
    "35.6.0": JetPack("5.1.4", "8.5.2", "11.4", "3.8"),
    "36.3.0": JetPack("6.0", "8.6.2", "12.2", "3.10"),
    "36.4.0": JetPack("6.1", "10.3.0", "12.6", "3.10"),
    "36.4.3": JetPack("6.2", "10.3.0", "12.6", "3.10"),
    "36.4.4": JetPack("6.2.1", "10.3.0", "12.6", "3.10"),
}

# Device-tree model text -> edgeinfer profile, first match wins (so "Orin Nano"
# is tried before "Nano").  Modules without a profile of their own (AGX Xavier,
# Orin NX) get the profile whose GPU they share, except where memory differs a lot.
MODEL_PROFILES = (
    ("orin nano", "jetson-orin-nano"),
    ("agx orin", "jetson-agx-orin"),
    ("orin", "jetson-orin"),
    ("xavier nx", "jetson-xavier-nx"),
    ("tx2", "jetson-tx2"),
    ("quill", "jetson-tx2"),      # the TX2's board name in older device trees
    ("nano", "jetson-nano"),
)

MODEL_PATHS = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
RELEASE_PATH = "etc/nv_tegra_release"
NVPMODEL_STATUS = "var/lib/nvpmodel/status"
NVPMODEL_CONF = "etc/nvpmodel.conf"

_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", re.I)
_MODE = re.compile(r"<\s*POWER_MODEL\s+ID\s*=\s*(\d+)\s+NAME\s*=\s*([^\s>]+)", re.I)


def _read(root, relative, binary=False):
    try:
        with open(os.path.join(root, relative), "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data if binary else data.decode("utf-8", "replace")


def read_model(root="/"):
    """The device-tree model string, e.g. ``"NVIDIA Jetson Nano Developer Kit"``, or None."""
    for relative in MODEL_PATHS:
        text = _read(root, relative)
        if text is not None:
            return text.strip("\x00 \n") or None
    return None


def parse_l4t(text):
    """The L4T version in ``/etc/nv_tegra_release``'s first line: ``"32.7.1"``, or None.

    A revision with one part (``REVISION: 1.0`` is usual, ``REVISION: 2`` is not)
    gets a patch of 0.
    """
    match = _RELEASE.search(text or "")
    if match is None:
        return None
    parts = match.group(2).strip(".").split(".")
    while len(parts) < 2:
        parts.append("0")
    return "{}.{}".format(match.group(1), ".".join(parts[:2]))


def jetpack_for(l4t):
    """The :class:`JetPack` of an L4T version, or None for one not in :data:`L4T_RELEASES`."""
    return L4T_RELEASES.get(l4t) if l4t else None


def profile_for_model(model):
    """The edgeinfer profile name for a device-tree model string, or None."""
    text = (model or "").lower().replace("-", " ")
    if "jetson" not in text and "quill" not in text:
        return None
    for fragment, profile in MODEL_PROFILES:
        if fragment in text:
            return profile
    return None


def read_power_mode(root="/"):
    """The nvpmodel power mode: ``{"id": 0, "name": "MAXN"}``; name None if not in the
    conf; None when the status file cannot be read."""
    status = _read(root, NVPMODEL_STATUS)
    match = re.search(r"pmode:\s*(\d+)", status or "")
    if match is None:
        return None
    mode = int(match.group(1))
    names = dict((int(i), name) for i, name in _MODE.findall(_read(root, NVPMODEL_CONF) or ""))
    return {"id": mode, "name": names.get(mode)}


CPUFREQ_GLOB = "sys/devices/system/cpu/cpu[0-9]*/cpufreq"
DEVFREQ_GLOB = "sys/class/devfreq/*"
# The integrated GPU's devfreq node by SoC: 57000000.gpu (Nano), 17000000.gp10b (TX2),
# 17000000.gv11b (Xavier), 17000000.ga10b (Orin, JetPack 5), 17000000.gpu (JetPack 6).
GPU_DEVFREQ_NAMES = (".gpu", "gm20b", "gp10b", "gv11b", "ga10b")


def _number(root, relative):
    text = _read(root, relative)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def read_clocks(root="/"):
    """Whether ``jetson_clocks`` holds the clocks at their maximum, read from sysfs.

    ``jetson_clocks`` (``--show`` needs root) sets every CPU's ``scaling_min_freq``
    and the GPU's devfreq ``min_freq`` to their maxima under the current power
    mode; without it the governors lower them when idle.

    Returns:
        dict or None (neither cpufreq nor a GPU devfreq node is readable):
        ``jetson_clocks`` (``"on"`` when every CPU and the GPU have min == max, else
        ``"off"``), ``cpu_pinned`` and ``gpu_pinned`` (bool, None if unreadable),
        ``gpu_mhz`` (the GPU's current clock, None if unreadable).
    """
    cpus = []
    for folder in sorted(glob.glob(os.path.join(root, CPUFREQ_GLOB))):
        relative = os.path.relpath(folder, root)
        low = _number(root, os.path.join(relative, "scaling_min_freq"))
        high = _number(root, os.path.join(relative, "scaling_max_freq"))
        if low is not None and high is not None:
            cpus.append(low >= high)
    gpu_pinned = gpu_mhz = None
    for folder in sorted(glob.glob(os.path.join(root, DEVFREQ_GLOB))):
        if not os.path.basename(folder).endswith(GPU_DEVFREQ_NAMES):
            continue
        relative = os.path.relpath(folder, root)
        low = _number(root, os.path.join(relative, "min_freq"))
        high = _number(root, os.path.join(relative, "max_freq"))
        current = _number(root, os.path.join(relative, "cur_freq"))
        if low is not None and high is not None:
            gpu_pinned = low >= high
            gpu_mhz = None if current is None else current / 1e6
            break
    if not cpus and gpu_pinned is None:
        return None
    cpu_pinned = all(cpus) if cpus else None
    pinned = cpu_pinned is not False and gpu_pinned is not False
    return {"jetson_clocks": "on" if pinned else "off", "cpu_pinned": cpu_pinned,
            "gpu_pinned": gpu_pinned, "gpu_mhz": gpu_mhz}


class JetsonInfo(NamedTuple):
    """What :func:`read_jetson` found.

    Attributes:
        model: the device-tree model string (None if unreadable).
        l4t: the L4T version, e.g. ``"32.7.1"`` (None if unreadable).
        release: ``/etc/nv_tegra_release``'s first line, as written.
        jetpack: the :class:`JetPack` of that L4T (None when unknown).
        profile: the edgeinfer profile name for the model (None when none fits).
        power_mode: :func:`read_power_mode`'s dict, or None.
    """

    model: Optional[str]
    l4t: Optional[str]
    release: Optional[str]
    jetpack: Optional[JetPack]
    profile: Optional[str]
    power_mode: Optional[dict]

    def to_dict(self):
        data = self._asdict()
        data["jetpack"] = self.jetpack._asdict() if self.jetpack else None
        return data


def read_jetson(root="/"):
    """Describe the Jetson this runs on, or return None on anything else.

    Args:
        root: the file-system root to read from (default ``/``; tests give a fixture
            folder holding ``etc/nv_tegra_release`` and ``proc/device-tree/model``).

    Returns:
        :class:`JetsonInfo`, or None when neither file says "Jetson".
    """
    model = read_model(root)
    text = _read(root, RELEASE_PATH)
    release = text.splitlines()[0].strip() if text and text.strip() else None
    if release is None and profile_for_model(model) is None:
        return None
    l4t = parse_l4t(release)
    return JetsonInfo(model, l4t, release, jetpack_for(l4t), profile_for_model(model),
                      read_power_mode(root))
