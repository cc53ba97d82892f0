#!/usr/bin/env python3
"""What a rollout did, from a watch of the node pods, the ShardCluster's status.rollout and the
operator's Events; checks it against what the rollout scenarios expect (e2e/scenarios.sh).

The watch file has one line per pod event, as `watch_node_pods` records it:

    MICROSECONDS TYPE NAME UID ready=STATUS del=DELETION_TIMESTAMP rev=REVISION image=IMAGE

(MICROSECONDS: this machine's clock when the event arrived; the first events of the watch list
the pods that exist when it starts.) The pods' state at --since is the state before the
rollout; everything after it is the rollout.

On success it prints one JSON object (restarts in order, with their time split, and totals);
on a violation it prints one line saying what is wrong and exits 1.
"""

import argparse
import json
import re
import sys


def die(msg):
    print(msg)
    sys.exit(1)


def parse_watch(path):
    events = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4:
                continue
            fields = dict(p.split("=", 1) for p in parts[4:] if "=" in p)
            events.append(
                {
                    "t": int(parts[0]),
                    "type": parts[1],
                    "name": parts[2],
                    "uid": parts[3],
                    "ready": fields.get("ready") == "True",
                    "deleting": bool(fields.get("del")),
                    "rev": fields.get("rev", ""),
                    "image": fields.get("image", ""),
                }
            )
    return events


def group_of(cluster, name):
    """(group id, ordinal) of a node pod: CLUSTER-meta-N is group 0, CLUSTER-gG-N group G."""
    m = re.fullmatch(re.escape(cluster) + r"-(meta|g(\d+))-(\d+)", name)
    if not m:
        return None
    return (0 if m.group(1) == "meta" else int(m.group(2)), int(m.group(3)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--watch", required=True)
    ap.add_argument("--since", type=int, required=True, help="microseconds: the spec change")
    ap.add_argument("--until", type=int, required=True, help="microseconds: the rollout seen complete")
    ap.add_argument("--status", help="the ShardCluster as JSON (status.rollout.restarts)")
    ap.add_argument("--events", help="events.k8s.io Events of the namespace as JSON")
    ap.add_argument("--leaders", help="file of 'GROUP POD' lines: each group's leader before the rollout")
    ap.add_argument("--restarts", default="all=1", help="all=N, NAME=N,... (any other pod: 0), or any")
    ap.add_argument("--max-out", type=int, default=1, help="node pods not Ready/terminating/absent at once")
    ap.add_argument("--order", action="store_true", help="groups in id order, followers by descending ordinal, leader last")
    ap.add_argument("--clean", action="store_true", help="every restart has a clean stop report in status")
    ap.add_argument("--still", action="append", default=[], help="FROM_US:TO_US: no pod deleted or created then")
    args = ap.parse_args()

    events = parse_watch(args.watch)
    before = [e for e in events if e["t"] < args.since]
    after = [e for e in events if args.since <= e["t"] <= args.until]

    # The pods as they were when the spec changed.
    state = {}
    for e in before:
        if e["type"] == "DELETED":
            state.pop(e["name"], None)
        else:
            state[e["name"]] = e
    names = sorted(n for n in state if group_of(args.cluster, n))
    if not names:
        die(f"the pod watch ({args.watch}) saw no node pod of {args.cluster} before the rollout")
    out_before = [n for n in names if not state[n]["ready"] or state[n]["deleting"]]
    if out_before:
        die(f"pods not Ready when the rollout began: {', '.join(out_before)}")
    initial_uid = {n: state[n]["uid"] for n in names}

    # Replay: never more than --max-out node pods out (not Ready, terminating, or absent).
    max_out, max_out_at = 0, None
    incarnations = {n: [initial_uid[n]] for n in names}
    for e in after:
        n = e["name"]
        if n not in incarnations:
            continue
        if e["type"] == "DELETED":
            state.pop(n, None)
        else:
            state[n] = e
            if e["uid"] not in incarnations[n]:
                incarnations[n].append(e["uid"])
        out = [p for p in names if p not in state or not state[p]["ready"] or state[p]["deleting"]]
        if len(out) > max_out:
            max_out, max_out_at = len(out), (e["t"], out)
        if len(out) > args.max_out:
            die(
                f"{len(out)} node pods were out at once ({', '.join(out)}: not Ready, terminating or absent) "
                f"{(e['t'] - args.since) / 1e6:.1f}s after the spec change; at most {args.max_out} may be"
            )

    # How often each pod was restarted (incarnations after the first).
    restarts = {n: len(incarnations[n]) - 1 for n in names}
    if args.restarts == "any":
        want = dict(restarts)
    elif args.restarts.startswith("all="):
        want = {n: int(args.restarts[4:]) for n in names}
    else:
        want = {n: 0 for n in names}
        for kv in args.restarts.split(","):
            k, v = kv.split("=")
            want[k] = int(v)
    wrong = [f"{n} {restarts[n]} times (want {want[n]})" for n in names if restarts[n] != want[n]]
    if wrong:
        die(f"pods restarted the wrong number of times: {'; '.join(wrong)}")

    # Each restart: old incarnation -> new one, with the times of its steps.
    recorded = {}
    if args.status:
        with open(args.status) as f:
            for r in (json.load(f).get("status", {}).get("rollout") or {}).get("restarts", []):
                recorded[r["podUid"]] = r
    steps = []
    for n in names:
        uids = incarnations[n]
        for old, new in zip(uids, uids[1:]):
            def first(pred):
                return next((e["t"] for e in after if e["name"] == n and pred(e)), None)

            s = {
                "pod": n,
                "old_uid": old,
                "new_uid": new,
                "deleting": first(lambda e: e["uid"] == old and e["deleting"]),
                "gone": first(lambda e: e["uid"] == old and e["type"] == "DELETED"),
                "created": first(lambda e: e["uid"] == new),
                "ready": first(lambda e: e["uid"] == new and e["ready"]),
                "record": recorded.get(old),
            }
            if s["deleting"] is None:
                s["deleting"] = s["gone"] if s["gone"] is not None else s["created"]
            steps.append(s)
    steps.sort(key=lambda s: s["deleting"])

    if args.clean:
        for s in steps:
            r = s["record"]
            if r is None:
                die(f"status.rollout.restarts has no record of {s['pod']} (uid {s['old_uid']})")
            if not r.get("clean") or r.get("wasDown"):
                die(f"the stop of {s['pod']} was not clean: {json.dumps(r)}")
            if r.get("snapshotIndex") is None or r["snapshotIndex"] < r.get("appliedIndex", 0):
                die(f"the stop snapshot of {s['pod']} does not cover its applied index: {json.dumps(r)}")

    transfers = []
    if args.events:
        with open(args.events) as f:
            for ev in json.load(f).get("items", []):
                if ev.get("reason") != "RolloutTransferLeader":
                    continue
                m = re.search(r"group (\d+): moving leadership from pod (\d+) to updated node (\d+)", ev.get("note", ""))
                if m:
                    transfers.append((int(m.group(1)), int(m.group(2)), ev.get("eventTime") or ""))

    if args.order:
        groups = [group_of(args.cluster, s["pod"]) for s in steps]
        ids = [g for g, _ in groups]
        if ids != sorted(ids):
            die(f"groups were not rolled one after another in id order (meta first): {[s['pod'] for s in steps]}")
        leaders = {}
        if args.leaders:
            with open(args.leaders) as f:
                for line in f:
                    if line.strip():
                        g, pod = line.split()
                        leaders[int(g)] = pod
        for g in sorted(set(ids)):
            pods = [s["pod"] for s in steps if group_of(args.cluster, s["pod"])[0] == g]
            ordinals = [group_of(args.cluster, p)[1] for p in pods]
            last = pods[-1]
            if g in leaders and leaders[g] != last:
                die(f"group {g}: {leaders[g]} led before the rollout, but {last} was restarted last (order {pods})")
            if ordinals[:-1] != sorted(ordinals[:-1], reverse=True):
                die(f"group {g}: followers not restarted from the highest ordinal: {pods}")
            if args.events and not any(t[0] == g and t[1] == ordinals[-1] for t in transfers):
                die(f"group {g}: no RolloutTransferLeader Event moved leadership from pod {ordinals[-1]} ({last}) before it was restarted")

    for w in args.still:
        a, b = (int(x) for x in w.split(":"))
        moved = [e for e in events if a <= e["t"] <= b and (e["type"] != "MODIFIED" or e["deleting"])
                 and e["name"] in initial_uid]
        if moved:
            e = moved[0]
            die(f"{e['name']} was {'deleted' if e['deleting'] or e['type'] == 'DELETED' else 'created'} "
                f"{(e['t'] - a) / 1e6:.1f}s into the {(b - a) / 1e6:.0f}s the rollout was to stand still")

    # Time split per restart (seconds): prestop (the node's stop sequence, from its report),
    # terminate (deletion -> pod object gone: preStop hook, SIGTERM, exit), start (gone -> the
    # new pod Ready: recreated, scheduled, container started, log replayed, a leader known),
    # catch-up (Ready -> the next pod's stop sequence begins: the operator's gates, the new node
    # caught up, a leadership hand-over before a leader).
    def sec(a, b):
        return None if a is None or b is None else round((b - a) / 1e6, 2)

    stills = [tuple(int(x) for x in w.split(":")) for w in args.still]

    def still_within(a, b):
        """Seconds of the --still windows within [a, b] (a pause is not catch-up)."""
        return sum(max(0, min(b, w[1]) - max(a, w[0])) for w in stills) / 1e6

    rows = []
    for i, s in enumerate(steps):
        r = s["record"] or {}
        stop_ms = r.get("stopMs")
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        nxt_stop = None
        if nxt is not None:
            nxt_stop = nxt["deleting"] - int(((nxt["record"] or {}).get("stopMs") or 0) * 1000)
        rows.append(
            {
                "pod": s["pod"],
                "prestop_ms": stop_ms,
                "terminate_s": sec(s["deleting"], s["gone"]),
                "start_s": sec(s["gone"], s["ready"]),
                "catch_up_s": (
                    round(sec(s["ready"], nxt_stop) - still_within(s["ready"], nxt_stop), 2)
                    if nxt is not None and s["ready"] is not None
                    else None
                ),
                "was_down": r.get("wasDown"),
            }
        )

    def avg(key):
        v = [r[key] for r in rows if r[key] is not None]
        return (round(sum(v) / len(v), 2), max(v)) if v else (None, None)

    first = steps[0]["deleting"] - int(((steps[0]["record"] or {}).get("stopMs") or 0) * 1000) if steps else None
    last_ready = steps[-1]["ready"] if steps else None
    print(
        json.dumps(
            {
                "restarts": [s["pod"] for s in steps],
                "max_out": max_out,
                "max_out_pods": max_out_at[1] if max_out_at else [],
                "first_stop_s": sec(args.since, first),
                "last_ready_s": sec(args.since, last_ready),
                "total_s": sec(args.since, args.until),
                "still_s": round(still_within(args.since, args.until), 2),
                "prestop_ms": avg("prestop_ms"),
                "terminate_s": avg("terminate_s"),
                "start_s": avg("start_s"),
                "catch_up_s": avg("catch_up_s"),
                "steps": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
