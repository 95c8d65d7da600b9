#!/usr/bin/env bash
# Installs the Debian packages that scripts/services needs (RTSP server, Redis).
# Idempotent: asks apt only for what dpkg says is missing, so repeated CI runs are cheap.
set -euo pipefail

PKGS=(
  python3-gi gir1.2-gst-rtsp-server-1.0     # GstRtspServer from Debian's /usr/bin/python3
  gstreamer1.0-plugins-base                 # videotestsrc, videoconvert, decodebin
  gstreamer1.0-plugins-good                 # qtdemux, rtph264pay
  gstreamer1.0-plugins-ugly                 # x264enc
  gstreamer1.0-plugins-bad                  # h264parse lives here in GStreamer 1.22
  redis-server redis-tools                  # used only if no Redis already answers
  libgl1 libglib2.0-0                       # OpenCV (opencv-python, which the tracker needs)
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "ci_deps: all ${#PKGS[@]} packages already installed, nothing to do"
  exit 0
fi

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "ci_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "ci_deps: installed ${#missing[@]} package(s)"
