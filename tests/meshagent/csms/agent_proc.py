"""A charger's CSMS client as a real process, for the SIGKILL test.

``generate``: record TRANSACTIONS transactions of UPDATES updates each (the last left open),
printing one line per committed event; ``finish``: end every open transaction (PowerLoss)
and wait until the queue is drained, then print ``drained``.
"""

from __future__ import annotations

import argparse
import random
import sys

import trio

from meshagent.csms.client import CsmsClient
from meshagent.csms.store import CsmsStore
from tests.meshagent.csms.helpers import WallClock, fast_settings


async def main(args: argparse.Namespace) -> None:
    with CsmsStore(args.db) as store:
        client = CsmsClient(fast_settings(args.url, call_timeout_s=30.0), store,
                            rng=random.Random(args.seed), wall_clock_ms=WallClock())
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            if args.phase == "generate":
                await client.wait_online()
                for i in range(args.transactions):
                    tx = await client.start_transaction(evse_id=1, connector_id=1, id_token=f"TOKEN{i}",
                                                        energy_import_wh=0, energy_export_wh=0)
                    print("recorded", tx, 0, flush=True)
                    for k in range(args.updates):
                        seq = await client.update_transaction(tx, energy_import_wh=100 * (k + 1),
                                                              energy_export_wh=40 * (k + 1))
                        print("recorded", tx, seq, flush=True)
                    if i < args.transactions - 1:
                        seq = await client.end_transaction(tx, energy_import_wh=100 * args.updates,
                                                           energy_export_wh=40 * args.updates)
                        print("recorded", tx, seq, flush=True)
                print("generated", flush=True)
                await trio.sleep_forever()
            await client.wait_online()
            await client.end_interrupted_transactions()  # what the agent does at start
            await client.wait_drained()
            print("drained", flush=True)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--phase", choices=("generate", "finish"), required=True)
    parser.add_argument("--transactions", type=int, default=4)
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    trio.run(main, parser.parse_args())
    sys.exit(0)
