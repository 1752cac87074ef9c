"""``edgeinfer push``: put a bundle on a device over ssh and check that it arrived whole.

A bundle is one file, so pushing it is a copy with the tools every Linux device
already has: rsync when both ends have it, else scp, over the user's own ssh
(keys, ``~/.ssh/config``, jump hosts all apply).  There is no protocol of ours.
What push adds is care:

1. The bundle is opened and hash-checked here first: a broken bundle is never sent.
2. The file is copied under a hidden temporary name beside its destination
   (``.m.eib.partial-<random>``), never under its final name.
3. Its sha256 is computed *on the device* (``sha256sum``, else ``shasum``, else
   ``python3``) and compared with the local one; only then is it renamed into
   place (a rename within one folder is atomic), else it is deleted.
4. Optionally (``--warm``) the device loads it once with its own edgeinfer, so
   the TensorRT engine is built now rather than at the first request.

An unreachable host fails at the first ssh call, before anything is written.  A
copy cut off half-way leaves only the hidden temporary file, which the next push
to that folder deletes once it is an hour old.

Destinations are scp-style: ``[user@]host:path`` is remote, anything else a
local path (a mounted SD card, or a test).  A path ending in ``/`` is a folder
(created if needed); so is an existing folder.  Remote paths are limited to
letters, digits and ``._-+@,=/~`` so that no quoting can go wrong on the way
through the remote shell.
"""

import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from typing import NamedTuple, Optional

from .bundle import Bundle, sha256_of
from .errors import TransferError, UsageError

log = logging.getLogger("edgeinfer.push")

# ssh options for every call: never prompt (a prompt would hang a script), give up
# on an unreachable host quickly, and notice a connection that died mid-copy.
SSH_DEFAULTS = ("BatchMode=yes", "ConnectTimeout=10", "ServerAliveInterval=15",
                "ServerAliveCountMax=4")
SAFE_PATH = re.compile(r"^[A-Za-z0-9._/~+@,=-]+$")
PARTIAL = ".partial-"
# Temporary files of pushes cut off this long ago are deleted by the next push.
STALE_PARTIAL_MIN = 60
_CHUNK = 1024 * 1024

# Prints the sha256 of "$1" with whatever the device has (GNU/BusyBox, BSD/macOS, Python).
_HASH_FUNCTION = (
    'h() { if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1"; '
    'elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1"; '
    'else python3 -c "import hashlib,sys; d=hashlib.sha256(); f=open(sys.argv[1],\'rb\'); '
    '[d.update(b) for b in iter(lambda: f.read(1048576), b\'\')]; print(d.hexdigest())" "$1"; '
    'fi | cut -c1-64; }')


class Destination(NamedTuple):
    """Where a bundle goes: ``host`` (None: this machine) and ``path`` there."""

    host: Optional[str]
    path: str

    def __str__(self):
        return "{}:{}".format(self.host, self.path) if self.host else self.path


class PushResult(NamedTuple):
    """What :func:`push` did.

    Attributes:
        destination: where the bundle now is (host and full file path).
        sha256: its sha256, checked on arrival.
        size: its size in bytes.
        method: ``"copy"`` (local), ``"rsync"`` or ``"scp"``; ``"none"`` when an
            identical file was already there.
        warmed: whether ``--warm`` loaded it on the device.
    """

    destination: Destination
    sha256: str
    size: int
    method: str
    warmed: bool


def parse_destination(text):
    """Split an scp-style destination: ``[user@]host:path`` or a local path.

    As scp decides: a colon before the first slash makes it remote.  ``host:`` alone
    means the remote home folder.

    Raises:
        UsageError: an empty host or path, or a remote path with characters that
            cannot pass through a remote shell unquoted.
    """
    text = str(text or "").strip()
    if not text:
        raise UsageError("No destination given.",
                         "Give user@host:/folder/ (a device) or a local folder.")
    head, colon, tail = text.partition(":")
    if not colon or "/" in head:
        return Destination(None, text)
    if not head or head.endswith("@"):
        raise UsageError("Destination {!r} has no host before the ':'.".format(text),
                         "Write it as user@host:/folder/.")
    path = tail or "./"
    # The remote shell starts in the home folder: "~/x" is "x" there, unquoted.
    if path == "~":
        path = "./"
    elif path.startswith("~/"):
        path = path[2:] or "./"
    if not SAFE_PATH.match(path):
        raise UsageError("Remote path {!r} has characters edgeinfer does not send through "
                         "ssh.".format(tail), "Use letters, digits and ._-+@,=/ only.")
    return Destination(head, path)


def _final_name(destination_path, name, is_folder):
    if destination_path.endswith("/") or is_folder:
        return os.path.join(destination_path, name)
    return destination_path


def _partial_name(final):
    folder, name = os.path.split(final)
    return os.path.join(folder, ".{}{}{}".format(name, PARTIAL, uuid.uuid4().hex[:12]))


# -- local destinations ---------------------------------------------------------------------

def _copy_local(source, final, digest, overwrite):
    """Copy to a temporary name beside ``final``, check its hash there, rename."""
    folder = os.path.dirname(os.path.abspath(final))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise TransferError("Cannot create folder {}: {}.".format(folder, exc.strerror),
                            "Check the path and your permissions there.")
    if os.path.isdir(final):
        raise TransferError("{} is a folder, not a file name.".format(final),
                            "End the destination with / to copy into it.")
    if os.path.exists(final):
        if sha256_of(final) == digest:
            return "none"
        if not overwrite:
            raise UsageError("{} already exists with other content.".format(final),
                             "Pass --overwrite to replace it.")
    handle, partial = tempfile.mkstemp(prefix="." + os.path.basename(final) + PARTIAL,
                                       dir=folder)
    try:
        with open(source, "rb") as src, os.fdopen(handle, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
        arrived = sha256_of(partial)
        if arrived != digest:
            raise TransferError("The copy at {} has sha256 {}, not {}: it was damaged on the "
                                "way.".format(partial, arrived[:12], digest[:12]),
                                "Push again; if it repeats, check the storage.")
        os.chmod(partial, 0o644)
        os.replace(partial, final)
    except OSError as exc:
        raise TransferError("Cannot write {}: {}.".format(final, exc.strerror or exc),
                            "Check free space and permissions there.")
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return "copy"


# -- remote destinations --------------------------------------------------------------------

class Ssh(object):
    """Runs ssh, scp and rsync against one host with the same options.

    Args:
        host: ``[user@]host`` (anything ``ssh`` takes, including an alias from
            ``~/.ssh/config``).
        port: the ssh port (default None: ssh's choice).
        identity: a private key file (default None: ssh's choice).
        options: extra ``-o`` options, ``"Key=value"`` strings.
        runner: ``subprocess.run`` (replaceable in tests).
    """

    def __init__(self, host, port=None, identity=None, options=(), runner=subprocess.run):
        self.host = host
        self.options = []
        for option in tuple(SSH_DEFAULTS) + tuple(options or ()):
            self.options += ["-o", option]
        if identity:
            self.options += ["-i", str(identity)]
        self.port = port
        self.runner = runner

    def ssh_command(self):
        return ["ssh"] + self.options + (["-p", str(self.port)] if self.port else [])

    def run(self, script, what):
        """Run a POSIX shell script on the host; return its stdout.

        Raises:
            TransferError: ssh could not connect (one line with ssh's reason), or the
                script failed.
        """
        command = self.ssh_command() + [self.host, "sh -c " + shlex.quote(script)]
        done = self._call(command)
        if done.returncode != 0:
            self._fail(done, what)
        return done.stdout

    def _call(self, command):
        log.debug("running %s", " ".join(shlex.quote(c) for c in command))
        try:
            return self.runner(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
        except OSError as exc:
            raise TransferError("Cannot run {}: {}.".format(command[0], exc.strerror or exc),
                                "Install the OpenSSH client (ssh, scp).")

    def _fail(self, done, what):
        lines = [l.strip() for l in (done.stderr or "").splitlines() if l.strip()
                 and not l.startswith("Warning: Permanently added")]
        reason = lines[-1] if lines else "exit status {}".format(done.returncode)
        if done.returncode == 255:
            raise TransferError(
                "Cannot reach {} over ssh: {}.".format(self.host, reason.rstrip(".")),
                "Check the address and that the device is on; `ssh {}` must log in without a "
                "password prompt (set up a key with ssh-copy-id).".format(self.host))
        raise TransferError("{} on {} failed: {}.".format(what, self.host, reason.rstrip(".")),
                            "Check the path and your permissions on the device.")

    def copy(self, source, target, via):
        """Copy a local file to ``target`` on the host with rsync or scp.

        Raises:
            TransferError: as :meth:`run`.
        """
        if via == "rsync":
            shell = " ".join(shlex.quote(c) for c in self.ssh_command())
            command = ["rsync", "-q", "-e", shell, source, "{}:{}".format(self.host, target)]
        else:
            command = (["scp", "-q"] + self.options + (["-P", str(self.port)] if self.port
                                                       else [])
                       + [source, "{}:{}".format(self.host, target)])
        done = self._call(command)
        if done.returncode != 0:
            self._fail(done, "Copying with " + via)


def _prepare_script(destination_path, name):
    """Resolve the final path, make its folder, report what is there (one ssh call)."""
    return "\n".join([
        "set -e", _HASH_FUNCTION,
        "dest={}; name={}".format(shlex.quote(destination_path), shlex.quote(name)),
        'case "$dest" in */) final="$dest$name" ;; *) if [ -d "$dest" ]; then '
        'final="$dest/$name"; else final="$dest"; fi ;; esac',
        'dir=$(dirname "$final"); mkdir -p "$dir"',
        'find "$dir" -maxdepth 1 -name ".$(basename "$final"){}*" -mmin +{} -exec rm -f {{}} \\; '
        '2>/dev/null || true'.format(PARTIAL, STALE_PARTIAL_MIN),
        'echo "FINAL:$final"',
        'if [ -d "$final" ]; then echo "ISDIR:1"; fi',
        'if [ -f "$final" ]; then echo "HASH:$(h "$final")"; fi',
        'if command -v rsync >/dev/null 2>&1; then echo "RSYNC:1"; fi',
    ])


def _finish_script(partial, final, digest):
    """Hash the copy on the device; rename it into place if it matches, else delete it."""
    return "\n".join([
        _HASH_FUNCTION,
        "tmp={}; final={}".format(shlex.quote(partial), shlex.quote(final)),
        'got=$(h "$tmp")',
        'if [ "$got" = {} ]; then chmod 644 "$tmp" && mv -f "$tmp" "$final" && echo "OK:1"; '
        'else rm -f "$tmp"; echo "BAD:$got"; fi'.format(shlex.quote(digest)),
    ])


def _fields(output):
    fields = {}
    for line in (output or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.isupper():
            fields[key] = value.strip()
    return fields


def _push_remote(ssh, source, destination, digest, overwrite, via):
    name = os.path.basename(source)
    if not SAFE_PATH.match(name):
        raise UsageError("Bundle name {!r} has characters edgeinfer does not send through "
                         "ssh.".format(name), "Rename it (letters, digits and ._-+@,= only), or "
                         "give the full file name in the destination.")
    found = _fields(ssh.run(_prepare_script(destination.path, name), "Preparing the folder"))
    final = found.get("FINAL")
    if not final or not SAFE_PATH.match(final):
        raise TransferError("The device did not say where {} goes (got {!r}).".format(
            name, final), "Check that its login shell is a POSIX shell.")
    if found.get("ISDIR"):
        raise TransferError("{}:{} is a folder, not a file name.".format(ssh.host, final),
                            "End the destination with / to copy into it.")
    if found.get("HASH"):
        if found["HASH"] == digest:
            return final, "none"
        if not overwrite:
            raise UsageError("{}:{} already exists with other content.".format(ssh.host, final),
                             "Pass --overwrite to replace it.")
    if via == "auto":
        via = "rsync" if found.get("RSYNC") and shutil.which("rsync") else "scp"
    partial = _partial_name(final)
    log.info("Copying %s (%.1f MB) to %s:%s with %s", name, os.path.getsize(source) / 1e6,
             ssh.host, final, via)
    try:
        ssh.copy(source, partial, via)
        result = _fields(ssh.run(_finish_script(partial, final, digest), "Checking the copy"))
    except BaseException:
        # Best effort: the host may be the thing that failed.
        try:
            ssh.run("rm -f {}".format(shlex.quote(partial)), "Cleaning up")
        except Exception:
            log.debug("could not remove %s on %s", partial, ssh.host)
        raise
    if "OK" not in result:
        raise TransferError("The copy on {} has sha256 {}, not {}: it was damaged on the way "
                            "and was deleted.".format(ssh.host, (result.get("BAD") or "?")[:12],
                                                      digest[:12]),
                            "Push again; if it repeats, check the device's storage.")
    return final, via


def push(bundle, destination, warm=False, overwrite=False, port=None, identity=None,
         ssh_options=(), via="auto", remote_edgeinfer="edgeinfer", runner=subprocess.run):
    """Copy a bundle to a device (or a local folder), check it there, optionally warm it.

    Args:
        bundle: the ``.eib`` file.
        destination: ``[user@]host:path`` or a local path (see :func:`parse_destination`).
        warm: load the bundle once on the device after the copy, so its TensorRT
            engine is built now (default False).
        overwrite: replace a different file of the same name (default False).
        port: ssh port (default None: ssh's, or ``~/.ssh/config``'s).
        identity: ssh private key file (default None).
        ssh_options: extra ssh ``-o`` options, e.g. ``("StrictHostKeyChecking=no",)``.
        via: ``"auto"`` (rsync when both ends have it, else scp), ``"rsync"`` or ``"scp"``.
        remote_edgeinfer: the command that runs edgeinfer on the device, for ``warm``
            (default ``edgeinfer``; ``python3 -m edgeinfer`` is tried after it).
        runner: ``subprocess.run`` (replaceable in tests).

    Returns:
        :class:`PushResult`.

    Raises:
        UsageError: a bad destination, or a different file already there without
            ``overwrite``.
        BundleError: the bundle is missing or broken (nothing is sent).
        TransferError: the host cannot be reached, the copy fails or arrives
            damaged (nothing is left under the final name), or warming fails.
    """
    if via not in ("auto", "rsync", "scp"):
        raise UsageError("Unknown copy method {!r}.".format(via), "Use auto, rsync or scp.")
    target = parse_destination(destination)
    opened = Bundle.open(bundle)  # refuses a broken bundle before anything is sent
    source = os.path.abspath(opened.path)
    digest, size = sha256_of(source), os.path.getsize(source)
    name = os.path.basename(source)
    if target.host is None:
        final = _final_name(target.path, name, os.path.isdir(target.path))
        method = _copy_local(source, final, digest, overwrite)
        warmed = False
        if warm:
            _warm_local(final)
            warmed = True
        return PushResult(Destination(None, os.path.abspath(final)), digest, size, method,
                          warmed)
    ssh = Ssh(target.host, port, identity, ssh_options, runner)
    final, method = _push_remote(ssh, source, target, digest, overwrite, via)
    warmed = False
    if warm:
        _warm_remote(ssh, final, remote_edgeinfer)
        warmed = True
    return PushResult(Destination(target.host, final), digest, size, method, warmed)


def _warm_local(path):
    from .runtime.session import load
    load(path).close()


def _warm_remote(ssh, final, remote_edgeinfer):
    script = "{0} warm {1} || python3 -m edgeinfer warm {1}".format(
        remote_edgeinfer, shlex.quote(final))
    try:
        output = ssh.run(script, "Warming the bundle up")
    except TransferError as exc:
        raise TransferError("{} arrived and was checked, but warming it up failed: {}".format(
            final, exc.message), "Is edgeinfer installed on the device (`pip3 install "
                                 "edgeinfer`)? Run `edgeinfer warm {}` there to see.".format(final))
    for line in output.splitlines():
        log.info("  %s: %s", ssh.host, line)
