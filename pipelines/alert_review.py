"""The review loop's data path: an investigator's disposition of an alert, published on the
dispositions topic once the store holds it.

The store is the truth (`Store.dispose`, table `alert_dispositions`); the topic tells the stream jobs.
A disposition is keyed by the alert's `customer_id` (its `transaction_id` when the store has no
score row for it), so with the default partitioner it lands on the partition of that customer's
transactions and labels, where the fraud stream's per-partition state can take it in. A disposition
that could not be published is still stored; disposing again publishes it again (idempotent for a
consumer: the latest disposition of a transaction stands).
"""

from __future__ import annotations

from typing import Any

from pipelines.contracts import Disposition
from pipelines.errors import BrokerError
from pipelines.settings import Settings


def publish_disposition(settings: Settings, disposition: Disposition, timeout_s: float = 5.0,
                        producer: Any = None) -> None:
    """Produce `disposition` to `settings.topics.dispositions` and wait for the broker's ack, or raise
    BrokerError (one line) when the broker is not reachable or refuses it within `timeout_s`."""
    from kafka.errors import KafkaError

    from pipelines.kafka_io import make_producer, wait_for_broker

    own = producer is None
    if own:
        wait_for_broker(settings.kafka.bootstrap_servers, timeout_s, settings=settings)
        producer = make_producer(settings, linger_ms=0, max_block_ms=int(timeout_s * 1000),
                                 request_timeout_ms=int(timeout_s * 1000))
    try:
        producer.send(settings.topics.dispositions, key=disposition.kafka_key, value=disposition.to_json()
                      ).get(timeout=timeout_s)
    except KafkaError as exc:
        raise BrokerError(f"disposition not published to {settings.topics.dispositions} at "
                          f"{settings.kafka.bootstrap_servers}: {type(exc).__name__}") from None
    finally:
        if own:
            producer.close(timeout=timeout_s)
