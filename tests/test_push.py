"""``edgeinfer push`` (issue 5, requirement 7): copy a bundle to a device and check it there.

Local targets run everywhere.  The ssh tests start a real OpenSSH server on
127.0.0.1 (a random port, a throwaway host key and client key, this user only)
when ``sshd`` is installed, and skip with the reason where it is not; an
unreachable host needs only the ssh client.
"""

import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from edgeinfer import push as pushmod
from edgeinfer.bundle import Bundle
from edgeinfer.cli import main
from edgeinfer.errors import BundleError, TransferError, UsageError

SSH_CLIENT = shutil.which("ssh")


def sha(path):
    return hashlib.sha256(open(str(path), "rb").read()).hexdigest()


def listing(folder):
    return sorted(os.listdir(str(folder)))


@pytest.fixture
def bundle(tmp_path, tiny_bundle):
    path = tmp_path / "src" / "tiny.eib"
    path.parent.mkdir()
    shutil.copyfile(str(tiny_bundle), str(path))
    return path


@pytest.fixture
def other_bundle(tmp_path, make_manifest, tiny_model):
    """A valid bundle with the same file name as ``bundle`` and other content."""
    path = tmp_path / "other" / "tiny.eib"
    path.parent.mkdir()
    Bundle.write(str(path), make_manifest(name="other"), {"model.onnx": tiny_model.data})
    return path


# -- destinations ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, host, path", [
    ("nano@192.168.55.1:/opt/models/", "nano@192.168.55.1", "/opt/models/"),
    ("jetson:models", "jetson", "models"),
    ("jetson:", "jetson", "./"),
    ("jetson:~/models/", "jetson", "models/"),
    ("jetson:~", "jetson", "./"),
    ("/mnt/sd/models/", None, "/mnt/sd/models/"),
    ("./out/a:b.eib", None, "./out/a:b.eib"),
    ("models", None, "models"),
])
def test_destinations_read_like_scp(text, host, path):
    assert pushmod.parse_destination(text) == pushmod.Destination(host, path)


@pytest.mark.parametrize("text, fragment", [
    ("", "No destination given"),
    (":/opt/", "has no host before the ':'"),
    ("user@:/opt", "has no host"),
    ("jetson:/opt/my models/", "has characters edgeinfer does not send through ssh"),
    ("jetson:/opt/$(reboot)/", "has characters"),
])
def test_bad_destinations(text, fragment):
    with pytest.raises(UsageError) as info:
        pushmod.parse_destination(text)
    assert fragment in str(info.value)


# -- local targets ---------------------------------------------------------------------------

def test_push_to_a_local_folder_verifies_and_leaves_no_partial(bundle, tmp_path):
    dest = tmp_path / "device" / "opt" / "models"
    result = pushmod.push(str(bundle), str(dest) + "/")
    final = dest / "tiny.eib"
    assert result.destination == pushmod.Destination(None, str(final))
    assert result.sha256 == sha(bundle) == sha(final) and result.method == "copy"
    assert result.size == os.path.getsize(str(bundle)) and not result.warmed
    assert listing(dest) == ["tiny.eib"]
    # Again: already there, nothing copied.
    assert pushmod.push(str(bundle), str(dest)).method == "none"  # an existing folder
    assert Bundle.open(str(final)).manifest["name"] == "tiny"


def test_push_to_a_file_name(bundle, tmp_path):
    result = pushmod.push(str(bundle), str(tmp_path / "dev" / "renamed.eib"))
    assert result.destination.path.endswith(os.path.join("dev", "renamed.eib"))
    assert listing(tmp_path / "dev") == ["renamed.eib"]


def test_other_content_is_not_overwritten_unless_asked(bundle, other_bundle, tmp_path):
    dest = tmp_path / "dev"
    pushmod.push(str(bundle), str(dest) + "/")
    before = sha(dest / "tiny.eib")
    with pytest.raises(UsageError) as info:
        pushmod.push(str(other_bundle), str(dest) + "/")
    assert "already exists with other content" in str(info.value)
    assert "--overwrite" in str(info.value) and sha(dest / "tiny.eib") == before
    assert pushmod.push(str(other_bundle), str(dest) + "/", overwrite=True).method == "copy"
    assert sha(dest / "tiny.eib") == sha(other_bundle) and listing(dest) == ["tiny.eib"]


def test_a_broken_bundle_is_never_sent(bad_bundles, tmp_path):
    dest = tmp_path / "dev"
    with pytest.raises(BundleError):
        pushmod.push(str(bad_bundles["tampered"].path), str(dest) + "/")
    assert not dest.exists()


def test_damaged_copy_is_deleted_not_renamed(bundle, tmp_path, monkeypatch):
    def damaging(src, dst, length=0):
        data = bytearray(src.read())
        data[100] ^= 0xFF
        dst.write(bytes(data))
    monkeypatch.setattr(pushmod.shutil, "copyfileobj", damaging)
    dest = tmp_path / "dev"
    with pytest.raises(TransferError) as info:
        pushmod.push(str(bundle), str(dest) + "/")
    assert "it was damaged on the way" in str(info.value)
    assert listing(dest) == []


def test_unwritable_local_destination(bundle, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TransferError) as info:
        pushmod.push(str(bundle), str(blocker / "models") + "/")
    assert "Cannot create folder" in str(info.value)


def test_local_warm_loads_the_bundle(bundle, tmp_path):
    assert pushmod.push(str(bundle), str(tmp_path / "dev") + "/", warm=True).warmed


# -- ssh: unreachable hosts ------------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(SSH_CLIENT is None, reason="the OpenSSH client (ssh) is not installed")
@pytest.mark.parametrize("host, fragment", [
    ("127.0.0.1", "Connection refused"),
    ("nano@no-such-device.invalid", "Could not resolve hostname"),
])
def test_unreachable_host_is_one_line_and_writes_nothing(bundle, host, fragment):
    port = free_port()  # nothing listens there
    with pytest.raises(TransferError) as info:
        pushmod.push(str(bundle), "{}:/opt/models/".format(host), port=port)
    text = str(info.value)
    assert text.startswith("Cannot reach {} over ssh: ".format(host)) and fragment in text
    assert "ssh-copy-id" in text and "\n" not in text


@pytest.mark.skipif(SSH_CLIENT is None, reason="the OpenSSH client (ssh) is not installed")
def test_cli_push_to_unreachable_host(bundle):
    result = CliRunner().invoke(main, ["push", str(bundle), "127.0.0.1:/opt/models/", "--port",
                                       str(free_port())], catch_exceptions=False)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: Cannot reach 127.0.0.1 over ssh: ")


# -- ssh: a real server on 127.0.0.1 ---------------------------------------------------------

class Server(object):
    def __init__(self, user, port, identity, folder):
        self.user, self.port, self.identity, self.folder = user, port, identity, folder
        self.host = "{}@127.0.0.1".format(user)
        self.options = ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null",
                        "LogLevel=ERROR", "IdentitiesOnly=yes")

    def push(self, bundle, path, **kwargs):
        return pushmod.push(str(bundle), "{}:{}".format(self.host, path), port=self.port,
                            identity=self.identity, ssh_options=self.options, **kwargs)

    def cli_args(self):
        args = ["--port", str(self.port), "--identity", self.identity]
        for option in self.options:
            args += ["-o", option]
        return args


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An OpenSSH server on 127.0.0.1 accepting one throwaway key for this user."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    keygen = shutil.which("ssh-keygen")
    if not os.path.exists(binary) or keygen is None or SSH_CLIENT is None:
        pytest.skip("sshd is not installed here (apt-get install openssh-server): push over "
                    "ssh is tested against a local path and an unreachable host only")
    folder = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)],
                       check=True)
    shutil.copyfile(str(folder / "client_key.pub"), str(folder / "authorized_keys"))
    os.chmod(str(folder / "client_key"), 0o600)
    if os.geteuid() == 0:
        try:  # sshd's privilege-separation folder, absent where sshd never ran
            os.makedirs("/run/sshd", exist_ok=True)
        except OSError as exc:
            pytest.skip("sshd cannot run here: /run/sshd: {}".format(exc))
    port = free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        "Port {}".format(port), "ListenAddress 127.0.0.1",
        "HostKey {}".format(folder / "host_key"),
        "AuthorizedKeysFile {}".format(folder / "authorized_keys"),
        "PidFile {}".format(folder / "sshd.pid"), "StrictModes no", "UsePAM no",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "AllowUsers {}".format(getpass.getuser()),
        "Subsystem sftp internal-sftp", ""]))
    process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Server(getpass.getuser(), port, str(folder / "client_key"), folder)
    deadline = time.time() + 10
    while True:
        probe = subprocess.run(["ssh", "-p", str(port), "-i", server.identity, "-o",
                                "BatchMode=yes"] + sum([["-o", o] for o in server.options], [])
                               + [server.host, "true"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
        if probe.returncode == 0:
            break
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.skip("sshd did not start here: {}".format(
                (process.stderr.read() or b"").decode().strip()[-200:] or probe.stderr.strip()))
        time.sleep(0.2)
    yield server
    process.terminate()
    process.wait(10)


@pytest.mark.parametrize("via", ["rsync", "scp"])
def test_push_over_ssh_verifies_on_the_device(sshd, bundle, tmp_path, via):
    if via == "rsync" and shutil.which("rsync") is None:
        pytest.skip("rsync is not installed here")
    dest = tmp_path / "device-{}".format(via)
    result = sshd.push(bundle, str(dest) + "/models/", via=via)
    final = dest / "models" / "tiny.eib"
    assert result.method == via and result.destination.path == str(final)
    assert result.sha256 == sha(bundle) == sha(final)
    assert listing(dest / "models") == ["tiny.eib"]
    assert sshd.push(bundle, str(dest) + "/models", via=via).method == "none"


def test_auto_picks_rsync_when_both_ends_have_it(sshd, bundle, tmp_path):
    expected = "rsync" if shutil.which("rsync") else "scp"
    assert sshd.push(bundle, str(tmp_path / "dev") + "/").method == expected


def test_remote_file_with_other_content_is_kept(sshd, bundle, other_bundle, tmp_path):
    dest = tmp_path / "dev"
    sshd.push(bundle, str(dest) + "/")
    with pytest.raises(UsageError) as info:
        sshd.push(other_bundle, str(dest) + "/")
    assert "already exists with other content" in str(info.value)
    assert sha(dest / "tiny.eib") == sha(bundle)
    assert sshd.push(other_bundle, str(dest) + "/", overwrite=True).method != "none"
    assert sha(dest / "tiny.eib") == sha(other_bundle) and listing(dest) == ["tiny.eib"]


def test_copy_damaged_on_the_way_is_deleted_on_the_device(sshd, bundle, tmp_path, monkeypatch):
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(b"not the bundle")
    real_copy = pushmod.Ssh.copy
    monkeypatch.setattr(pushmod.Ssh, "copy",
                        lambda self, source, target, via: real_copy(self, str(wrong), target, via))
    dest = tmp_path / "dev"
    with pytest.raises(TransferError) as info:
        sshd.push(bundle, str(dest) + "/")
    assert "damaged on the way and was deleted" in str(info.value)
    assert listing(dest) == []


def test_failed_copy_leaves_no_partial_file(sshd, bundle, tmp_path, monkeypatch):
    def broken(self, source, target, via):
        # Half a file arrives, then the connection drops.
        self.run("head -c 100 /dev/zero > {}".format(target), "copy")
        raise TransferError("Cannot reach {} over ssh: Broken pipe.".format(self.host))
    monkeypatch.setattr(pushmod.Ssh, "copy", broken)
    dest = tmp_path / "dev"
    with pytest.raises(TransferError):
        sshd.push(bundle, str(dest) + "/")
    assert listing(dest) == []


def test_old_partial_files_are_cleaned_up(sshd, bundle, tmp_path):
    dest = tmp_path / "dev"
    dest.mkdir()
    old = dest / ".tiny.eib.partial-0123456789ab"
    old.write_bytes(b"half")
    hours_ago = time.time() - 7200
    os.utime(str(old), (hours_ago, hours_ago))
    recent = dest / ".tiny.eib.partial-ba9876543210"
    recent.write_bytes(b"another push, still running")
    sshd.push(bundle, str(dest) + "/")
    assert listing(dest) == [".tiny.eib.partial-ba9876543210", "tiny.eib"]


def test_warm_runs_the_devices_edgeinfer(sshd, bundle, tmp_path):
    remote = os.path.join(os.path.dirname(sys.executable), "edgeinfer")
    if not os.path.exists(remote):
        pytest.skip("the edgeinfer console script is not installed")
    result = sshd.push(bundle, str(tmp_path / "dev") + "/", warm=True, remote_edgeinfer=remote)
    assert result.warmed
    with pytest.raises(TransferError) as info:
        sshd.push(bundle, str(tmp_path / "dev") + "/", warm=True,
                  remote_edgeinfer="/nonexistent/edgeinfer")
    assert "arrived and was checked, but warming it up failed" in str(info.value)


def test_cli_push_over_ssh(sshd, bundle, tmp_path):
    dest = tmp_path / "dev"
    args = ["push", str(bundle), "{}:{}/".format(sshd.host, dest)] + sshd.cli_args()
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith(
        "pushed tiny.eib to {}:{}/tiny.eib (sha256 {}... verified".format(
            sshd.host, dest, sha(bundle)[:12]))


def test_cli_warm_loads_and_times_one_inference(tiny_bundle):
    result = CliRunner().invoke(main, ["warm", str(tiny_bundle)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith("{} ready on onnxruntime: loaded in ".format(tiny_bundle))
    assert line.endswith(" ms") and "first inference" in line


def test_cli_push_to_a_local_folder(bundle, tmp_path):
    dest = tmp_path / "sd" / "models"
    args = ["push", str(bundle), str(dest) + "/"]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == again.exit_code == 0
    assert first.output == "pushed tiny.eib to {} (sha256 {}... verified on arrival; " \
                           "copied)\n".format(dest / "tiny.eib", sha(bundle)[:12])
    assert again.output.endswith("already there, identical)\n")
