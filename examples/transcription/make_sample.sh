#!/usr/bin/env bash
# Regenerates hello.wav, the demo's bundled sample, from hello.txt: espeak-ng speaks the text,
# sox converts it to 16 kHz mono 16-bit PCM with a little silence around it. Both run
# deterministically (sox -R: repeatable, -D: no dither), so the same Debian packages give the
# same bytes. Needs: apt-get install espeak-ng sox. The result is committed, so running the demo
# needs neither.
#
#   usage: make_sample.sh [TEXT_FILE [OUT.wav]]     (defaults: hello.txt hello.wav beside this script)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
text_file="${1:-$here/hello.txt}"
out="${2:-$here/hello.wav}"
for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null || { echo "make_sample.sh: needs $tool (apt-get install espeak-ng sox)" >&2; exit 2; }
done
raw="$(mktemp --suffix=.wav)"
trap 'rm -f "$raw"' EXIT
espeak-ng -v en-us -s 150 -w "$raw" -f "$text_file"
sox -R -D "$raw" -r 16000 -c 1 -b 16 -e signed-integer "$out" pad 0.2 0.3
echo "wrote $out ($(soxi -D "$out") s, $(stat -c %s "$out") bytes) from $text_file"
