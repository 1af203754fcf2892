# Headless Chromium and ChromeDriver for the browser tests (Debian packages).
# Exports KEYFOB_TEST_CHROMIUM and KEYFOB_TEST_CHROMEDRIVER. Nothing to stop:
# each test starts its own ChromeDriver with a fresh profile, and ends its
# Chromium with pkill (procps) by that profile's path.

start_browser() {
  ensure_pkg chromium chromium
  ensure_pkg chromedriver chromium-driver
  ensure_pkg pkill procps
  export KEYFOB_TEST_CHROMIUM=$(command -v chromium)
  export KEYFOB_TEST_CHROMEDRIVER=$(command -v chromedriver)
  echo "$("$KEYFOB_TEST_CHROMIUM" --version 2>/dev/null | head -n 1)"
}

stop_browser() { :; }
