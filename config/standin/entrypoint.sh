#!/bin/sh
# Behaves like a Kit streaming app as seen from outside, steered by the environment:
#   STANDIN_EXIT_CODE=N    exit at once with code N (a crashing app)
#   STANDIN_NEVER_READY=1  never open the ports (an app that hangs while starting)
#   STANDIN_READY_DELAY=S  wait S seconds (a slow start), then open the ports
# Ready means: GET /v1/streaming/ready on 8011 answers 200, and the signaling port 49100
# accepts TCP connections. The media port 47998/UDP is published, but the stand-in streams
# nothing, so nothing answers there (busybox has no UDP server).
trap 'exit 0' TERM INT

echo "stand-in Kit app: USD_PATH=${USD_PATH:-}"
if [ -n "${STANDIN_EXIT_CODE:-}" ]; then
    echo "stand-in Kit app: exiting with code ${STANDIN_EXIT_CODE} as asked" >&2
    exit "${STANDIN_EXIT_CODE}"
fi
if [ "${STANDIN_NEVER_READY:-}" = "1" ]; then
    echo "stand-in Kit app: never getting ready, as asked"
else
    delay="${STANDIN_READY_DELAY:-0}"
    [ "$delay" != "0" ] && echo "stand-in Kit app: ready in ${delay}s" && sleep "$delay"
    echo "ok" > /www/ready/v1/streaming/ready
    # httpd holds a connection open waiting for a request, as Kit's WebRTC signaling does,
    # so a TCP probe through Docker's port proxy sees an open connection, not a reset.
    httpd -p 8011 -h /www/ready
    httpd -p 49100 -h /www/signaling
    echo "stand-in Kit app: ready"
fi
# Sleep in the background so the trap can end the script at once on `docker stop`.
while :; do
    sleep 3600 &
    wait $!
done
