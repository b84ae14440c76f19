"""What investigators reviewing the top K cards a day CAN reveal: the ceiling of the review loop's targets.

The handbook's simulator has three kinds of fraud (TX_FRAUD_SCENARIO): 1 amounts over 220 (visible in the
transaction itself), 2 a compromised terminal (every transaction at it for 28 days, amounts unchanged:
nothing in a transaction tells it apart until a label or a disposition names the terminal), 3 a
compromised card (a third of its transactions for 14 days at five times the amount).

Given a model's scores of a file (`argus fraud replay -o scores.parquet`), this replays the same simulated
investigators as the replay (models/review_simulator.py: each day the K cards with the highest score get
their day's true labels at the day's end + the latency) and counts, over the evaluation window:

* terminal-compromise frauds whose terminal already had a fraud KNOWN when they happened, by chargeback
  (event time + the delay) or by a disposition (decided_at), within 28 days; the others are
  indistinguishable from legitimate transactions for any model;
* the same for compromised cards (the customer, 14 days; these stay detectable by their amounts);
* Card Precision@K ceilings: every card with a fraud that day in the top K; and only cards with a fraud a
  model could know about (not only unknowable terminal-compromise frauds), with and without reviews;
* the AP ceiling: every knowable fraud ranked first, the unknowable ones where the model put them.

    python benchmarks/fraud_review_ceiling.py --input ../shared/data/fraud/handbook_2018-04-01_to_2018-07-31.csv.gz \\
        --scores /tmp/replay.parquet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DAY = 86400.0
TERMINAL_DAYS, CARD_DAYS = 28.0, 14.0  # how long the simulator keeps a terminal / a card compromised


def known_before(keys: np.ndarray, at: np.ndarray, event_keys: np.ndarray, event_times: np.ndarray,
                 window_days: float) -> np.ndarray:
    """Per row: some event of the row's key became known in (at - window, at]."""
    order = np.lexsort((event_times, event_keys))
    ek, et = event_keys[order], event_times[order]
    lo = np.searchsorted(ek, keys, "left")
    hi = np.searchsorted(ek, keys, "right")
    out = np.zeros(len(keys), bool)
    for i in np.nonzero(hi > lo)[0]:
        times = et[lo[i]:hi[i]]
        j = np.searchsorted(times, at[i], "right")
        out[i] = j > 0 and times[j - 1] >= at[i] - window_days * DAY
    return out


def card_precision_cap(day: np.ndarray, customer: np.ndarray, fraud: np.ndarray, k: int) -> float:
    """Mean over days of min(k, cards with such a fraud that day) / k: the best Card Precision@k."""
    f = pd.DataFrame({"day": day, "c": customer, "f": fraud}).groupby(["day", "c"]).f.any().groupby("day").sum()
    return float(np.minimum(f.to_numpy(), k).mean() / k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, required=True, help="the handbook file (with TX_FRAUD_SCENARIO)")
    ap.add_argument("--scores", type=Path, required=True, help="`argus fraud replay` output for the same file")
    ap.add_argument("--review-per-day", type=int, default=100)
    ap.add_argument("--review-latency-s", type=float, default=3600.0)
    ap.add_argument("--delay-days", type=float, default=7.0)
    ap.add_argument("--eval-start", default="2018-07-04")
    ap.add_argument("--eval-end", default="2018-08-01")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from sklearn.metrics import average_precision_score

    from models.review_simulator import review_day

    hb = pd.read_csv(args.input, usecols=["TRANSACTION_ID", "TX_FRAUD_SCENARIO"])
    scen = pd.Series(hb.TX_FRAUD_SCENARIO.to_numpy(), index="hb-" + hb.TRANSACTION_ID.astype(str))
    s = pd.read_parquet(args.scores, columns=["transaction_id", "timestamp", "customer_id", "terminal_id", "score",
                                              "label"])
    s = s[s.label.notna()].reset_index(drop=True)
    kind = scen.reindex(s.transaction_id).to_numpy()
    if np.isnan(kind.astype(float)).any():
        raise SystemExit("some scored transactions are not in --input: use the file the replay scored")
    ts = (pd.to_datetime(s.timestamp, utc=True) - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    y, sc = s.label.to_numpy(bool), s.score.to_numpy(float)
    cust, term = s.customer_id.to_numpy(str), s.terminal_id.to_numpy(str)
    day = np.floor(ts / DAY).astype(np.int64)
    lo = pd.Timestamp(args.eval_start, tz="UTC").timestamp()
    hi = pd.Timestamp(args.eval_end, tz="UTC").timestamp()
    win = (ts >= lo) & (ts < hi)

    # the investigators of the replay, ranking by these scores
    rev = {"t": [], "c": [], "at": [], "kind": []}
    for d in np.unique(day):
        rows = np.nonzero(day == d)[0]
        v = review_day(ts[rows], s.transaction_id.to_numpy()[rows].tolist(), cust[rows].tolist(), term[rows].tolist(),
                       sc[rows], y[rows], args.review_per_day, args.review_latency_s)
        fraud_ids = {t for t, k_ in zip(v.transaction_id, v.kind) if k_ == "fraud"}
        for t, c, m, at in zip(v.transaction_id, v.customer_id, v.terminal_id, v.decided_at.tolist()):
            if t in fraud_ids:
                rev["t"].append(m), rev["c"].append(c), rev["at"].append(at), rev["kind"].append(scen[t])
    rk = np.array(rev["kind"])
    r_at = np.array(rev["at"], float)
    label_at = ts[y] + args.delay_days * DAY

    rows = np.nonzero(win)[0]
    out: dict[str, dict] = {}
    knowable = y & win
    for name, scenario, keys, ev_keys_label, ev_keys_rev, days in (
            ("compromised_terminal", 2, term, term[y], np.array(rev["t"], str), TERMINAL_DAYS),
            ("compromised_card", 3, cust, cust[y], np.array(rev["c"], str), CARD_DAYS)):
        m = rows[kind[rows] == scenario]
        by_label = known_before(keys[m], ts[m], ev_keys_label[kind[y] == scenario], label_at[kind[y] == scenario], days)
        by_review = known_before(keys[m], ts[m], ev_keys_rev[rk == scenario], r_at[rk == scenario], days)
        out[name] = {"frauds": int(len(m)), "known_by_chargeback": int(by_label.sum()),
                     "known_by_review": int(by_review.sum()), "known_only_by_review": int((by_review & ~by_label).sum()),
                     "named_by_neither": int((~by_label & ~by_review).sum())}
        if scenario == 2:  # a terminal nobody has named yet: nothing to tell its frauds apart
            knowable[m[~by_label & ~by_review]] = False
            no_review = y & win
            no_review[m[~by_label]] = False
    w = np.nonzero(win)[0]
    k = args.review_per_day
    ceiling_ap = sc.copy()
    ceiling_ap[knowable] = 2.0
    out["ceiling"] = {
        "cp_all_fraud_cards": round(card_precision_cap(day[w], cust[w], y[w], k), 4),
        "cp_knowable_without_reviews": round(card_precision_cap(day[w], cust[w], no_review[w], k), 4),
        "cp_knowable_with_reviews": round(card_precision_cap(day[w], cust[w], knowable[w], k), 4),
        "ap_of_these_scores": round(float(average_precision_score(y[w], sc[w])), 4),
        "ap_knowable_ranked_first": round(float(average_precision_score(y[w], ceiling_ap[w])), 4),
    }
    print(f"# fraud_review_ceiling: {args.scores.name}, top {k} cards/day reviewed, verdicts "
          f"{args.review_latency_s / 3600:g} h after the day's end, chargebacks {args.delay_days:g} days late; "
          f"window {args.eval_start} .. {args.eval_end} (exclusive): {int(win.sum()):,} rows, {int((y & win).sum()):,} frauds")
    print("\n| fraud kind | frauds | known by chargeback | known by review | only by review | named by neither |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in ("compromised_terminal", "compromised_card"):
        r = out[name]
        print(f"| {name} | {r['frauds']:,} | {r['known_by_chargeback']:,} | {r['known_by_review']:,} | "
              f"{r['known_only_by_review']:,} | {r['named_by_neither']:,} |")
    print("\n" + "\n".join(f"{key}: {v}" for key, v in out["ceiling"].items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
