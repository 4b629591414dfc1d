#!/usr/bin/env bash
# Install everything the tests, the demo and the benchmark need on a fresh Debian/Ubuntu machine:
# the OpenSSH server and iproute2 (for the network-namespace test hosts), Debian's python3-venv
# (the test hosts' remote environment is built from /usr/bin/python3), Chromium and its driver
# (the JupyterLab browser test, tests/frontends), PAM's google-authenticator module and oathtool (the 2FA
# test host), SLURM's controller, node daemon and client commands with munge (the SLURM test cluster,
# tests/slurmcluster.py), and a virtualenv .venv with this package and its
# test and frontend extras. Run as root (or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v ip >/dev/null || missing+=(iproute2)
command -v unshare >/dev/null || missing+=(util-linux)
command -v pgrep >/dev/null || missing+=(procps)
command -v zsh >/dev/null || missing+=(zsh)     # the remote start command is tested under zsh too (macOS login shell)
command -v sudo >/dev/null || missing+=(sudo)   # the test host's user gets passwordless sudo (--sudo tests)
# The 2FA test host (tests/integration/test_login.py): sshd with PAM, pam_unix then one-time codes.
ls /lib/*/security/pam_google_authenticator.so /usr/lib/*/security/pam_google_authenticator.so >/dev/null 2>&1 \
    || missing+=(libpam-google-authenticator)
command -v oathtool >/dev/null || missing+=(oathtool)   # the codes the tests type
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# The SLURM test cluster (tests/slurmcluster.py): a login host with slurmctld, compute hosts with slurmd.
[ -x /usr/sbin/slurmctld ] || missing+=(slurmctld)
[ -x /usr/sbin/slurmd ] || missing+=(slurmd)
command -v sbatch >/dev/null || missing+=(slurm-client)
[ -x /usr/sbin/munged ] || missing+=(munge)
command -v chromium >/dev/null || missing+=(chromium)              # headless, for tests/frontends
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
echo "setup: installing ssh_ipykernel[test,frontend] into .venv"
.venv/bin/python -m pip install -q -e '.[test,frontend]'
echo "setup: done"
