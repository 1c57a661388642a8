#!/usr/bin/env bash
# Debian packages the test suite needs: a real Slurm (slurmctld, slurmd, client), munge, and
# Open MPI with headers (mpi4py builds against it), and Debian's Chromium with its driver (the
# report's browser tests drive it through Selenium; no browser is ever downloaded from
# elsewhere). Installed only when running as root and
# only what is missing; otherwise says what is missing and carries on (the Slurm/MPI tests
# then skip with the reason, except in CI, where they fail).
set -euo pipefail
need=()
command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ] || need+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ] || need+=(munge)
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
[ -f /usr/include/x86_64-linux-gnu/mpi/mpi.h ] || [ -f /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] \
  || dpkg -s libopenmpi-dev >/dev/null 2>&1 || need+=(libopenmpi-dev)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: slurm-wlm, munge, openmpi, chromium, chromium-driver present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system packages missing (${need[*]}); not root, so not installing them:" \
       "Slurm, MPI and browser tests will skip" >&2
  exit 0
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
