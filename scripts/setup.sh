#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine with Python 3.11:
# FluidSynth and the FluidR3 General MIDI soundfont from Debian, three game-music packages
# and the lame / vorbis-tools / opus-tools codecs for the MOS model, and a virtual environment
# in .venv with the CPU build of torch and the package in editable mode. Safe to run again:
# each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v fluidsynth >/dev/null 2>&1 || packages+=(fluidsynth)
[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || packages+=(fluid-soundfont-gm)
# The MOS model's real-music training data and codecs (configs/mos/embedded.yaml):
# freely licensed game soundtracks (GPL-2+, CC-BY-SA-3.0, CC-BY-3.0; about 715 MB to
# download) and the MP3, Vorbis and Opus encoders. The fretsonfire-* song packages are kept
# for evaluation elsewhere.
for package in lame vorbis-tools opus-tools wesnoth-1.16-music hedgewars-data supertux-data \
  marsshooter-data extremetuxracer-data xmoto-data openclonk-data; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
    || packages+=("$package")
done
# The web app's browser tests: headless Chromium and its driver (Selenium is given its path).
for package in chromium chromium-driver; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
    || packages+=("$package")
done
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${packages[@]}" >/dev/null
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
  python=$(command -v python3.11 || command -v python3)
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $python"
  "$python" -m venv .venv
fi

stamp=.venv/.qamdt-install-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # torch first, pinned: a looser requirement would pull the CUDA build.
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,app]"
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv/bin/qamdt)"
