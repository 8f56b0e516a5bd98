#!/usr/bin/env bash
# Regenerates the media clips in fixtures/ with Debian's ffmpeg.
# The outputs are committed: the simulators embed them, so nothing at run
# time needs ffmpeg. Re-run only to change the clips; keep them small.
set -euo pipefail
cd "$(dirname "$0")/../fixtures"
command -v ffmpeg >/dev/null || { echo "make-fixtures: ffmpeg not found (apt-get install ffmpeg)" >&2; exit 1; }

font=/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf
ff() { ffmpeg -hide_banner -loglevel error -y "$@"; }

# A test pattern with the frame number burnt in, so a viewer (or a test that
# decodes one frame) can tell which frame of the clip it is looking at.
pattern() { # WIDTH HEIGHT SECONDS
  local w=$1 h=$2 s=$3 fs=$(( $2 / 6 ))
  echo "smptehdbars=size=320x180:rate=25:duration=$s,scale=$w:$h:flags=bilinear,drawtext=fontfile=$font:text='%{frame_num}':start_number=0:x=(w-tw)/2:y=(h-th)/2:fontsize=$fs:fontcolor=white:box=1:boxcolor=black@0.6"
}

# Camera-like elementary streams: 25 fps, GOP 25 (one I-frame a second),
# no B-frames (cameras send I/P only), parameter sets repeated on every
# I-frame (raw output without global headers makes both encoders do that).
h264() { # NAME W H SECONDS CRF
  ff -f lavfi -i "$(pattern "$2" "$3" "$4")" -c:v libx264 -preset veryfast -tune zerolatency \
     -profile:v main -pix_fmt yuv420p -g 25 -keyint_min 25 -sc_threshold 0 -bf 0 -crf "$5" \
     -x264-params "aud=0" -f h264 "$1"
}
h265() { # NAME W H SECONDS CRF
  ff -f lavfi -i "$(pattern "$2" "$3" "$4")" -c:v libx265 -preset veryfast -tune zerolatency \
     -pix_fmt yuv420p -g 25 -keyint_min 25 -bf 0 -crf "$5" \
     -x265-params "log-level=error:scenecut=0:repeat-headers=1:info=0" -f hevc "$1"
}

h264 h264_640x360.h264 640 360 3 28
h265 h265_640x360.h265 640 360 3 30
# 2592x1944 (5 MP, a common XMeye sensor): width/8 = 324 needs the high
# width bits of the DVRIP frame header.
h264 h264_2592x1944.h264 2592 1944 2 38
h265 h265_2592x1944.h265 2592 1944 2 40

# A JFIF snapshot (starts FF D8 FF E0, which python-dvr looks for).
ff -f lavfi -i "$(pattern 640 360 1)" -frames:v 1 -q:v 6 -f mjpeg snapshot_640x360.jpg

# Two seconds of a 1 kHz tone as raw 8 kHz G.711, the camera talk format.
ff -f lavfi -i "sine=frequency=1000:sample_rate=8000:duration=2" -ac 1 -c:a pcm_alaw -f alaw tone_8k.alaw
ff -f lavfi -i "sine=frequency=1000:sample_rate=8000:duration=2" -ac 1 -c:a pcm_mulaw -f mulaw tone_8k.ulaw

ls -l
