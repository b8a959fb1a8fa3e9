# Sourced by .ci/run and scripts/check-library: waits for a control plane's diagnostics port.
#
# wait_ready WHAT LOG: polls `GET /ready` on 127.0.0.1:5680 once a second for up to 60 s;
# says "WHAT: /ready answers 200 on 5680" and returns 0, or prints LOG and returns 1.
wait_ready() {
    local what="$1" log="$2" attempt
    for attempt in $(seq 1 60); do
        if (
            exec 3<>/dev/tcp/127.0.0.1/5680 || exit 1
            printf 'GET /ready HTTP/1.0\r\n\r\n' >&3
            head -n 1 <&3 | grep -q ' 200 '
        ) 2>/dev/null; then
            echo "$what: /ready answers 200 on 5680"
            return 0
        fi
        sleep 1
    done
    cat "$log" >&2
    echo "$what: the control plane did not become ready on 5680" >&2
    return 1
}
