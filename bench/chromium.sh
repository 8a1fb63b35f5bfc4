# Headless Chromium for the render-*.sh scripts (sourced, not run): the flags that keep it off
# the network (this host's closed network refuses its background connections), a fresh profile.
#
#   need_chromium NAME            exits 2, naming NAME, when no Chromium is installed
#   screenshot URL OUT.png W,H    a PNG of URL at that window size (profile under $work)

need_chromium() {
  chrome=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
  [ -n "$chrome" ] || { echo "$1: chromium is not installed (apt-get install chromium)" >&2; exit 2; }
}

screenshot() {
  "$chrome" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/chrome-profile" --hide-scrollbars \
    --window-size="$3" --screenshot="$2" "$1" >/dev/null 2>&1
}
