"""Each part of the dev/test stack is the real thing: used here through its own client."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from kafka import KafkaConsumer, KafkaProducer
from opa_client import AsyncOpaClient

from devstack.kafka_cluster import ADMIN, client_kwargs
from devstack.samples import sample_studies
from devstack.stack import Stack
from tests.integration.helpers import orthanc_dicomweb

pytestmark = pytest.mark.integration


class TestKafka:
    def test_produce_and_consume_a_record(self, stack: Stack) -> None:
        kafka = client_kwargs(stack.services["kafka"], ADMIN)  # a topic outside the ACLs
        topic = f"smoke-{uuid.uuid4().hex[:8]}"
        value = uuid.uuid4().bytes
        producer = KafkaProducer(acks="all", enable_idempotence=True, **kafka)
        metadata = producer.send(topic, key=b"k", value=value).get(timeout=30)
        producer.close()
        assert metadata.topic == topic
        consumer = KafkaConsumer(
            topic,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=20000,
            group_id=f"smoke-{uuid.uuid4().hex[:8]}",
            **kafka,
        )
        try:
            received = [record.value for record in consumer]
        finally:
            consumer.close()
        assert received == [value]


class TestOpa:
    def test_load_a_policy_and_query_it(self, stack: Stack) -> None:
        url = httpx.URL(stack.services["opa"].endpoints["url"])
        policy = 'package smoke.ping\n\ndefault answer := false\n\nanswer if input.word == "ping"\n'

        async def go() -> tuple[object, object]:
            async with AsyncOpaClient(host=url.host, port=url.port) as client:
                assert await client.update_policy_from_string(policy, "smoke-ping")
                yes = await client.query_rule({"word": "ping"}, "smoke.ping", "answer")
                no = await client.query_rule({"word": "pong"}, "smoke.ping", "answer")
                await client.delete_policy("smoke-ping")
                return yes["result"], no["result"]

        assert asyncio.run(go()) == (True, False)


class TestOrthanc:
    def _client(self, stack: Stack) -> DICOMwebClient:
        return orthanc_dicomweb(stack.services["orthanc"])

    def test_qido_finds_every_sample_study(self, stack: Stack) -> None:
        found = {s["0020000D"]["Value"][0] for s in self._client(stack).search_for_studies()}
        assert {s.study_uid for s in sample_studies()} <= found

    def test_wado_retrieves_a_sample_study(self, stack: Stack) -> None:
        study = next(s for s in sample_studies() if s.key == "stolaf-ct-chest")
        instances = self._client(stack).retrieve_study(study.study_uid)
        assert len(instances) == study.raw["instances"]
        assert {str(i.StudyInstanceUID) for i in instances} == {study.study_uid}
        assert all(i.InstitutionName == study.raw["institution"] for i in instances)
