"""What the device says about itself while a bundle runs: energy, temperature, CPU time.

Everything here reads sysfs/procfs read-only and answers None (with the reason)
when a file is absent or unreadable: a report says "not available here", never
a made-up number.  Every reader takes ``root`` (default ``/``) so tests can give
a folder laid out like the real one.

Device side: standard library only, Python 3.6 syntax.
"""

import glob
import os
import re
import shutil
import subprocess
import threading
import time

NOT_AVAILABLE = "not available here"

# Linux powercap: one top-level zone per CPU package ("intel-rapl:0"); its sub-zones
# ("intel-rapl:0:0", core/uncore/dram) are already counted in the package, so they are
# left out to avoid counting energy twice.
RAPL_GLOB = "sys/class/powercap/intel-rapl:*"

# Jetson on-board INA3221 monitors: the old driver (JetPack 4) exposes power in mW, the
# hwmon one (JetPack 5+) voltage in mV and current in mA per rail.
INA_POWER_GLOBS = ("sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power*_input",)
INA_HWMON_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"

THERMAL_GLOB = "sys/class/thermal/thermal_zone*"

# Rails that measure a whole Jetson module (see _total_only).
TOTAL_RAILS = ("POM_5V_IN", "VDD_IN")

# How often the Jetson rails are sampled: their registers refresh every few ms, and a
# thread waking at 20 Hz costs nothing measurable next to a model.
INA_PERIOD_S = 0.05


def _read_number(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _read_text(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _rapl_zones(root):
    zones = []
    for folder in sorted(glob.glob(os.path.join(root, RAPL_GLOB))):
        if os.path.basename(folder).count(":") != 1:
            continue
        energy = os.path.join(folder, "energy_uj")
        if _read_number(energy) is None:
            # Since Linux 5.10 energy_uj is root-only (a side channel): present but unreadable.
            continue
        wrap = _read_number(os.path.join(folder, "max_energy_range_uj"))
        zones.append((energy, wrap))
    return zones


def _total_only(rails):
    """The module's input rail alone when there is one, else every rail.

    POM_5V_IN (Nano, TX1) and VDD_IN (TX2, Xavier NX, Orin NX/Nano) measure the
    whole module and already contain the GPU and CPU rails beside them, so adding
    those would count their power twice.  AGX Orin has no such rail: its rails
    are summed.
    """
    total = [r for r in rails if r[0] in TOTAL_RAILS]
    return total[:1] if total else rails


def _ina_power_files(root):
    rails = []
    for pattern in INA_POWER_GLOBS:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            if _read_number(path) is None:
                continue
            # in_power0_input is named by rail_name_0 in the device folder (JetPack 4).
            index = os.path.basename(path)[len("in_power"):-len("_input")]
            name = _read_text(os.path.join(os.path.dirname(path), "rail_name_" + index))
            rails.append((name, path))
    return [path for _, path in _total_only(rails)]


def _ina_hwmon_rails(root):
    rails = []
    for folder in sorted(glob.glob(os.path.join(root, INA_HWMON_GLOB))):
        for current in sorted(glob.glob(os.path.join(folder, "curr*_input"))):
            index = os.path.basename(current)[len("curr"):-len("_input")]
            voltage = os.path.join(folder, "in{}_input".format(index))
            if _read_number(current) is not None and _read_number(voltage) is not None:
                name = _read_text(os.path.join(folder, "in{}_label".format(index)))
                rails.append((name, (voltage, current)))
    return [pair for _, pair in _total_only(rails)]


class EnergyMeter(object):
    """Energy used between :meth:`start` and :meth:`stop`, from whatever the device has.

    Sources, in order: Linux powercap RAPL counters (x86, joules counted by the CPU),
    then a Jetson's INA3221 rails (power sampled every :data:`INA_PERIOD_S` and
    integrated).  ``source`` is None and ``why_not`` says so when there is neither.

    Args:
        root: the file-system root to read from (default ``/``).
    """

    def __init__(self, root="/"):
        self.root = root
        self._rapl = _rapl_zones(root)
        self._ina = [] if self._rapl else _ina_power_files(root)
        self._hwmon = [] if self._rapl or self._ina else _ina_hwmon_rails(root)
        if self._rapl:
            self.source = "rapl"
        elif self._ina or self._hwmon:
            self.source = "jetson-ina3221"
        else:
            self.source = None
        self.why_not = None if self.source else (
            "{}: no readable powercap RAPL counters or Jetson INA3221 rails".format(NOT_AVAILABLE))
        self._begin = None
        self._thread = None
        self._stop = None
        self._joules = 0.0

    def _rapl_read(self):
        return [_read_number(path) for path, _ in self._rapl]

    def _power_w(self):
        if self._ina:
            return sum((_read_number(p) or 0) for p in self._ina) / 1000.0
        total = 0.0
        for voltage, current in self._hwmon:
            total += (_read_number(voltage) or 0) * (_read_number(current) or 0) / 1e6
        return total

    def _sample(self):
        last = time.perf_counter()
        power = self._power_w()
        while not self._stop.wait(INA_PERIOD_S):
            now = time.perf_counter()
            current = self._power_w()
            # Trapezoids: the mean of two samples over the time between them.
            self._joules += 0.5 * (power + current) * (now - last)
            last, power = now, current

    def start(self):
        """Begin a measurement (does nothing without a source)."""
        if self.source == "rapl":
            self._begin = self._rapl_read()
        elif self.source is not None:
            self._joules = 0.0
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, name="edgeinfer-energy")
            self._thread.daemon = True
            self._thread.start()

    def stop(self):
        """End the measurement: joules used since :meth:`start`, or None without a source."""
        if self.source == "rapl" and self._begin is not None:
            total = 0
            for (_, wrap), before, after in zip(self._rapl, self._begin, self._rapl_read()):
                if before is None or after is None:
                    return None
                delta = after - before
                if delta < 0 and wrap:
                    delta += wrap  # the counter wrapped around once
                total += delta
            self._begin = None
            return total / 1e6
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            return self._joules
        return None


def temperatures_c(root="/"):
    """Every readable thermal zone's temperature: ``{"zone type": degrees C}`` (may be empty)."""
    found = {}
    for folder in sorted(glob.glob(os.path.join(root, THERMAL_GLOB))):
        milli = _read_number(os.path.join(folder, "temp"))
        if milli is None:
            continue
        name = _read_text(os.path.join(folder, "type")) or os.path.basename(folder)
        if name in found:
            name = "{} ({})".format(name, os.path.basename(folder))
        found[name] = milli / 1000.0
    return found


def max_temperature_c(root="/"):
    """The hottest thermal zone in degrees C, or None when none is readable."""
    values = temperatures_c(root).values()
    return max(values) if values else None


def cpu_clock(root="/"):
    """Whether the CPU ran below its maximum clock: ``{"cur_khz", "max_khz"}`` of cpu0, or None.

    A current clock under the maximum during a run means a power mode, governor or
    heat held it back (the Jetson power modes and thermal throttling both show here).
    """
    folder = os.path.join(root, "sys/devices/system/cpu/cpu0/cpufreq")
    cur = _read_number(os.path.join(folder, "scaling_cur_freq"))
    top = _read_number(os.path.join(folder, "cpuinfo_max_freq"))
    if cur is None or top is None:
        return None
    return {"cur_khz": cur, "max_khz": top}


class CpuClock(object):
    """This process's CPU time (user + system, all threads) over a stretch of wall time."""

    def __init__(self):
        self._cpu = None
        self._wall = None

    def start(self):
        times = os.times()
        self._cpu = times[0] + times[1]
        self._wall = time.perf_counter()

    def stop(self):
        """Percent of one core used since :meth:`start` (200 = two cores busy)."""
        times = os.times()
        wall = time.perf_counter() - self._wall
        if wall <= 0:
            return None
        return 100.0 * (times[0] + times[1] - self._cpu) / wall


# -- tegrastats ------------------------------------------------------------------------------

# tegrastats prints one line per interval; the fields differ between releases:
#   JetPack 4 (Nano):  ... EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 ... CPU@40C PMIC@50C ...
#                      POM_5V_IN 1750/1628 POM_5V_GPU 0/0 POM_5V_CPU 366/406   (mW, no unit)
#   JetPack 5/6 (Orin): 05-15-2025 18:30:28 RAM ... EMC_FREQ 18%@3199 GR3D_FREQ 84%@[713] ...
#                      cpu@65.562C gpu@63.5C tj@65.562C VDD_IN 17946mW/15710mW ...
#   AGX Orin:          GR3D_FREQ 0%@[0,0] CV0@-256C ... VDD_GPU_SOC 2340mW/2340mW NC 0mW/0mW
# A rail is "NAME current/average", in mW; a temperature "name@degreesC" (-256C: sensor off).
TEGRASTATS_PERIOD_MS = 100
_RAIL = re.compile(r"(?:^|\s)([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_TEMPERATURE = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?=\s|$)")
_LOAD = re.compile(r"(?:^|\s)(GR3D_FREQ|GR3D2_FREQ|EMC_FREQ)\s+(\d+)%(?:@\[?(\d+))?")
_NOT_RAILS = ("RAM", "SWAP", "IRAM", "NC")
# Readings that are not temperatures of anything: PMIC@100C is a constant on Nano and
# Xavier, and -256C marks a powered-down sensor (Orin's CV and GPU zones at idle).
_NOT_TEMPERATURES = ("PMIC",)
_COLDEST_REAL_C = -40.0


def parse_tegrastats(line):
    """One tegrastats line as numbers; fields the line lacks are left out.

    Returns:
        dict: ``rails_mw`` (rail -> current mW), ``power_mw`` (the module's input
        rail, or the sum of the rails when it has none; see :func:`_total_only`),
        ``temperatures_c`` (sensor -> degrees C, powered-down sensors left out),
        ``gr3d_percent`` (GPU load; GR3D2 too on two-GPC Orins, averaged),
        ``gr3d_mhz``, ``emc_percent`` (memory controller load), ``emc_mhz``.
    """
    found = {}
    rails = [(name, int(now)) for name, now, _ in _RAIL.findall(line)
             if name not in _NOT_RAILS]
    if rails:
        found["rails_mw"] = dict(rails)
        found["power_mw"] = sum(mw for _, mw in _total_only(rails))
    temperatures = dict((name, float(value)) for name, value in _TEMPERATURE.findall(line)
                        if float(value) > _COLDEST_REAL_C and name not in _NOT_TEMPERATURES)
    if temperatures:
        found["temperatures_c"] = temperatures
    gpu = []
    for name, percent, mhz in _LOAD.findall(line):
        if name == "EMC_FREQ":
            found["emc_percent"] = float(percent)
            if mhz:
                found["emc_mhz"] = float(mhz)
        else:
            gpu.append(float(percent))
            if mhz and name == "GR3D_FREQ":
                found["gr3d_mhz"] = float(mhz)
    if gpu:
        found["gr3d_percent"] = sum(gpu) / len(gpu)
    return found


def summarize_tegrastats(samples):
    """Readings ``[(seconds, parse_tegrastats(line)), ...]`` over a stretch, summarized.

    Returns:
        dict or None (no samples): ``samples``; ``energy_j`` (power integrated over
        the samples' times, trapezoids; None without a power reading); ``power_w_mean``;
        ``gr3d_percent_mean`` / ``_max``, ``emc_percent_mean``, ``temperature_c_max``
        (each None when the lines lack it).
    """
    if not samples:
        return None

    def values(key):
        return [s[key] for _, s in samples if key in s]

    power = [(t, s["power_mw"] / 1000.0) for t, s in samples if "power_mw" in s]
    energy = None
    if len(power) >= 2:
        energy = sum(0.5 * (w0 + w1) * (t1 - t0)
                     for (t0, w0), (t1, w1) in zip(power, power[1:]))
    gr3d, emc = values("gr3d_percent"), values("emc_percent")
    hottest = [max(t.values()) for t in values("temperatures_c")]
    return {"samples": len(samples), "energy_j": energy,
            "power_w_mean": sum(w for _, w in power) / len(power) if power else None,
            "gr3d_percent_mean": sum(gr3d) / len(gr3d) if gr3d else None,
            "gr3d_percent_max": max(gr3d) if gr3d else None,
            "emc_percent_mean": sum(emc) / len(emc) if emc else None,
            "temperature_c_max": max(hottest) if hottest else None}


class Tegrastats(object):
    """Runs ``tegrastats --interval`` while a phase runs and keeps its lines as numbers.

    Jetson only: ``available`` is False (and ``why_not`` says so) where no
    ``tegrastats`` is on PATH.  tegrastats runs without root; a few fields it
    prints only for root are then simply absent.

    Args:
        binary: the program (default None: ``tegrastats`` found on PATH).
        interval_ms: its sampling interval (default :data:`TEGRASTATS_PERIOD_MS`).
    """

    def __init__(self, binary=None, interval_ms=TEGRASTATS_PERIOD_MS):
        self.binary = binary or shutil.which("tegrastats")
        self.interval_ms = int(interval_ms)
        self.available = self.binary is not None
        self.why_not = None if self.available else (
            "{}: no tegrastats on PATH (a Jetson tool)".format(NOT_AVAILABLE))
        self._proc = None
        self._thread = None
        self._samples = []

    def _read(self, proc):
        for line in proc.stdout:
            parsed = parse_tegrastats(line)
            if parsed:
                self._samples.append((time.perf_counter(), parsed))

    def start(self):
        """Start sampling (does nothing where tegrastats is not available)."""
        if not self.available:
            return
        self._samples = []
        try:
            self._proc = subprocess.Popen(
                [self.binary, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, universal_newlines=True)
        except OSError as exc:
            self.available = False
            self.why_not = "{}: tegrastats could not start ({})".format(NOT_AVAILABLE, exc)
            return
        self._thread = threading.Thread(target=self._read, args=(self._proc,),
                                        name="edgeinfer-tegrastats")
        self._thread.daemon = True
        self._thread.start()

    def stop(self):
        """Stop sampling: :func:`summarize_tegrastats` of what was read, or None."""
        if self._proc is None:
            return None
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._thread.join(5)
        self._proc.stdout.close()
        self._proc = self._thread = None
        return summarize_tegrastats(self._samples)
