#!/usr/bin/env python3
"""Writes API keys straight into scopegate's Redis layout, as a RESP stream for `redis-cli --pipe`.

Layout (src/store/redis.rs): `sg:key:{id}` = KeyRecord JSON without last_used_at (src/model.rs),
`sg:keys` and `sg:appkeys:{app}` = sets of key ids. The secret's digest is the lower-case hex
SHA-256 of the secret; the full key is `sg_<id>_<secret>` (12 + 32 alphanumerics).

Usage: mkkeys.py --app APP_ID --count N --keys-out FILE [--sample K --sample-out FILE] | redis-cli -p P --pipe
The full keys go to --keys-out, one a line; --sample writes a random sample of K of them.
"""
import argparse
import hashlib
import json
import random
import string
import sys
import time

ALNUM = string.ascii_letters + string.digits
SET_BATCH = 1000  # ids per SADD


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def mask(full):
    return full[:4] + "*" * (len(full) - 8) + full[-4:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--app", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--keys-out", required=True)
    p.add_argument("--sample", type=int, default=0)
    p.add_argument("--sample-out")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()

    rng = random.Random(a.seed)
    now = int(time.time())
    out = sys.stdout.buffer
    buf = []
    ids = []
    keys = []
    seen = set()
    for n in range(a.count):
        while True:
            kid = "".join(rng.choices(ALNUM, k=12))
            if kid not in seen:
                seen.add(kid)
                break
        secret = "".join(rng.choices(ALNUM, k=32))
        full = "sg_%s_%s" % (kid, secret)
        record = {
            "id": kid,
            "app_id": a.app,
            "name": "bench-%d" % n,
            "masked": mask(full),
            "secret_hash": hashlib.sha256(secret.encode()).hexdigest(),
            "created_at": now,
            "created_by": "bench",
            "expires_at": None,
            "last_used_at": None,
        }
        buf.append(resp("SET", "sg:key:" + kid, json.dumps(record, separators=(",", ":"))))
        ids.append(kid)
        keys.append(full)
        if len(ids) == SET_BATCH:
            buf.append(resp("SADD", "sg:keys", *ids))
            buf.append(resp("SADD", "sg:appkeys:" + a.app, *ids))
            out.write(b"".join(buf))
            buf, ids = [], []
    if ids:
        buf.append(resp("SADD", "sg:keys", *ids))
        buf.append(resp("SADD", "sg:appkeys:" + a.app, *ids))
    out.write(b"".join(buf))
    out.flush()
    with open(a.keys_out, "w") as f:
        f.write("\n".join(keys) + "\n")
    if a.sample and a.sample_out:
        sample = rng.sample(keys, min(a.sample, len(keys)))
        with open(a.sample_out, "w") as f:
            f.write("\n".join(sample) + "\n")


if __name__ == "__main__":
    main()
