"""`sidstream produce embeddings`: embeddings computed outside the pipeline (your own encoder) as
`Embedding` records on embeddings.<modality>, in place of an encoder worker's (docs/encoders.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sidcore.config import get_settings


@click.group()
def produce() -> None:
    """Produce records to the pipeline's topics."""


@produce.command("embeddings")
@click.option("--modality", type=click.Choice(["audio", "text"]), default="audio", show_default=True,
              help="the embeddings.<modality> topic the records go to")
@click.option("--model-id", required=True,
              help="the encoder that computed them (a live codebook that records another model id for the modality refuses them)")
@click.option("--npy", "npy", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="float [n, dim] array, one row per id")
@click.option("--ids", "ids_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="the track id of each row, one per line")
@click.option("--dim", type=click.IntRange(min=1), default=None, help="refuse the file unless its rows have this dim")
def produce_embeddings(modality: str, model_id: str, npy: Path, ids_file: Path, dim: int | None) -> None:
    """Send one Embedding record per row of --npy to embeddings.<modality>, tagged with --model-id.

    The assigner codes them as it codes the encoder worker's (their tracks' metadata still goes
    to tracks.metadata); under a codebook fitted on another model id each is a dead letter
    `model_mismatch` on embeddings.<modality>.dlq naming both ids. Nothing is sent when a row is
    not finite or the rows and ids do not match."""
    import numpy as np

    from sidstream.cli import UserError
    from streams.admin.topics import TopicNames
    from streams.kafka_clients import check_access
    from streams.producer import TrackProducer, checked_embeddings

    s = get_settings()
    track_ids = [line.strip() for line in ids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        X = np.load(npy, allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{npy}: not a numeric .npy array ({exc})") from exc
    try:
        checked_embeddings(modality, track_ids, X, model_id, dim)  # a bad file sends nothing
    except ValueError as exc:
        raise UserError(f"{npy}: {exc}") from exc
    names = TopicNames(s.kafka.topic_prefix)
    check_access(s.kafka)
    producer = TrackProducer(s.kafka, names.metadata, names.audio, max_message_bytes=s.kafka.max_message_bytes,
                             embedding_topics={"text": names.emb_text, "audio": names.emb_audio})
    try:
        n = producer.send_embeddings(modality, track_ids, X, model_id, dim=dim)
        producer.flush(60)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"{npy}: {exc}") from exc
    click.echo(json.dumps({"topic": producer.embedding_topics[modality], "records": n, "model_id": model_id,
                           "dim": int(X.shape[1])}))
