#!/bin/sh
# Behaves like a Kit streaming app as seen from outside, steered by the environment:
#   STANDIN_EXIT_CODE=N      exit at once with code N (a crashing app)
#   STANDIN_EXIT_AFTER=S     with STANDIN_EXIT_CODE: become ready, then exit S seconds later
#   STANDIN_NEVER_READY=1    never open the ports (an app that hangs while starting)
#   STANDIN_READY_DELAY=S    wait S seconds (a slow start), then open the ports
#   STANDIN_QUIT_ON_LEAVE=1  quit with code 0 when its signaling client (one WebSocket)
#                            leaves, as Kit apps built for OVAS do
# Ready means: GET /v1/streaming/ready on 8011 answers 200, and the signaling port 49100
# speaks WebSocket on any path (`/sign_in?peer_id=...` as Kit's): each client's socket is
# held open until it closes it, as Kit's WebRTC signaling socket is, and echoes every text
# message back (websocketd runs a `cat` per client; a line is a message). A TCP connection
# that never upgrades is held open too. The media port 47998/UDP is published, but the
# stand-in streams nothing, so nothing answers there (busybox has no UDP server).
trap 'exit 0' TERM INT

echo "stand-in Kit app: USD_PATH=${USD_PATH:-}"
if [ -n "${STANDIN_EXIT_CODE:-}" ] && [ -z "${STANDIN_EXIT_AFTER:-}" ]; then
    echo "stand-in Kit app: exiting with code ${STANDIN_EXIT_CODE} as asked" >&2
    exit "${STANDIN_EXIT_CODE}"
fi
if [ "${STANDIN_NEVER_READY:-}" = "1" ]; then
    echo "stand-in Kit app: never getting ready, as asked"
    while :; do
        sleep 3600 &
        wait $!
    done
fi
delay="${STANDIN_READY_DELAY:-0}"
[ "$delay" != "0" ] && echo "stand-in Kit app: ready in ${delay}s" && sleep "$delay"
echo "ok" > /www/ready/v1/streaming/ready
httpd -p 8011 -h /www/ready
signaling() {
    websocketd --port=49100 --loglevel=error "$@"
}
if [ "${STANDIN_QUIT_ON_LEAVE:-}" = "1" ]; then
    echo "stand-in Kit app: ready; quitting when my client leaves"
    # One client: its socket is held until it closes it; then the app quits.
    signaling --maxforks=1 /bin/sh -c 'cat; kill -TERM $PPID' &
    wait $!
    echo "stand-in Kit app: my client left; quitting"
    exit 0
fi
# Every client's socket is held open (by a `cat` of its own) until it closes it.
signaling /bin/cat &
echo "stand-in Kit app: ready"
if [ -n "${STANDIN_EXIT_AFTER:-}" ]; then
    sleep "${STANDIN_EXIT_AFTER}" &
    wait $!
    echo "stand-in Kit app: exiting with code ${STANDIN_EXIT_CODE:-0} as asked" >&2
    exit "${STANDIN_EXIT_CODE:-0}"
fi
# Sleep in the background so the trap can end the script at once on `docker stop`.
while :; do
    sleep 3600 &
    wait $!
done
