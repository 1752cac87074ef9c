"""What the device says about itself while a bundle runs: energy, temperature, CPU time.

Everything here reads sysfs/procfs read-only and answers None (with the reason)
when a file is absent or unreadable: a report says "not available here", never
a made-up number.  Every reader takes ``root`` (default ``/``) so tests can give
a folder laid out like the real one.

Device side: standard library only, Python 3.6 syntax.
"""

import glob
import os
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


def _ina_power_files(root):
    files = []
    for pattern in INA_POWER_GLOBS:
        files.extend(p for p in sorted(glob.glob(os.path.join(root, pattern)))
                     if _read_number(p) is not None)
    return files


def _ina_hwmon_rails(root):
    rails = []
    for folder in sorted(glob.glob(os.path.join(root, INA_HWMON_GLOB))):
        for current in sorted(glob.glob(os.path.join(folder, "curr*_input"))):
            index = os.path.basename(current)[len("curr"):-len("_input")]
            voltage = os.path.join(folder, "in{}_input".format(index))
            if _read_number(current) is not None and _read_number(voltage) is not None:
                rails.append((voltage, current))
    return rails


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
