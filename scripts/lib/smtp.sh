# shellcheck shell=bash
# A throw-away SMTP sink for kinko's notice tests. Sourced by scripts/test.
#
# Debian's python3-aiosmtpd (`apt-get install -y python3-aiosmtpd`) listens on a free loopback port and
# writes every message it accepts into a Maildir (its Mailbox handler adds X-Peer, X-MailFrom and X-RcptTo
# headers). It is Debian's /usr/bin/python3 that has the module, not whatever python3 comes first on PATH.
#
#   smtp_start     # sets and exports KINKO_TEST_SMTP_ADDR=127.0.0.1:PORT and KINKO_TEST_SMTP_DIR=<maildir>
#   smtp_cleanup   # stops the sink and removes its directory (safe to call twice)

SMTP_PYTHON=${SMTP_PYTHON:-/usr/bin/python3}

# Whether the sink can run here.
smtp_available() {
    [[ -x "$SMTP_PYTHON" ]] && "$SMTP_PYTHON" -c 'import aiosmtpd' >/dev/null 2>&1
}

# A TCP port on 127.0.0.1 that nothing listens on right now (best effort: smtp_start retries on a race).
smtp_free_port() {
    local port tries=0
    while ((tries < 200)); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
        tries=$((tries + 1))
    done
    echo "smtp.sh: no free port found" >&2
    return 1
}

# Starts the sink and waits until it accepts connections. Sets SMTP_DIR, SMTP_PID, SMTP_PORT and exports
# KINKO_TEST_SMTP_ADDR and KINKO_TEST_SMTP_DIR.
smtp_start() {
    if ! smtp_available; then
        echo "smtp.sh: $SMTP_PYTHON cannot import aiosmtpd; on Debian: apt-get install -y python3-aiosmtpd" >&2
        return 1
    fi
    SMTP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/kinko-smtp.XXXXXX")
    # A complete Maildir: the handler creates the subdirectories only when the directory itself is missing.
    mkdir -p "$SMTP_DIR/mail/new" "$SMTP_DIR/mail/cur" "$SMTP_DIR/mail/tmp"
    local attempt i
    for attempt in 1 2 3 4 5; do
        SMTP_PORT=$(smtp_free_port)
        echo "smtp: starting the sink on 127.0.0.1:$SMTP_PORT (attempt $attempt)"
        # -n: stay as this user (it would try to become `nobody`).
        "$SMTP_PYTHON" -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" -c aiosmtpd.handlers.Mailbox "$SMTP_DIR/mail" \
            >"$SMTP_DIR/server.log" 2>&1 &
        SMTP_PID=$!
        # Up to 10 s for it to listen.
        for i in $(seq 1 100); do
            if ! kill -0 "$SMTP_PID" 2>/dev/null; then
                break
            fi
            if (exec 3<>"/dev/tcp/127.0.0.1/$SMTP_PORT") 2>/dev/null; then
                KINKO_TEST_SMTP_ADDR="127.0.0.1:$SMTP_PORT"
                KINKO_TEST_SMTP_DIR="$SMTP_DIR/mail"
                export SMTP_DIR SMTP_PID SMTP_PORT KINKO_TEST_SMTP_ADDR KINKO_TEST_SMTP_DIR
                echo "smtp: ready at $KINKO_TEST_SMTP_ADDR, Maildir $KINKO_TEST_SMTP_DIR"
                return 0
            fi
            sleep 0.1
        done
        kill "$SMTP_PID" 2>/dev/null || true
        wait "$SMTP_PID" 2>/dev/null || true
        tail -n 20 "$SMTP_DIR/server.log" >&2 || true
    done
    echo "smtp.sh: could not start the SMTP sink" >&2
    return 1
}

# Stops the sink started by smtp_start and removes its directory.
smtp_cleanup() {
    if [[ -n "${SMTP_PID:-}" ]]; then
        kill "$SMTP_PID" 2>/dev/null || true
        wait "$SMTP_PID" 2>/dev/null || true
        SMTP_PID=
    fi
    if [[ -n "${SMTP_DIR:-}" && -d "$SMTP_DIR" ]]; then
        rm -rf "$SMTP_DIR"
    fi
    SMTP_DIR=
}
