"""Notifications as Amazon SNS delivers them to an HTTP(S) subscriber, signed so that
receivers written for AWS (and AWS's SNS message validators) accept them.

The POST carries SNS's headers (x-amz-sns-message-type, -message-id, -topic-arn,
-subscription-arn; Content-Type text/plain; charset=UTF-8) and SNS's JSON fields: Type,
MessageId, TopicArn, Subject, Message, Timestamp, SignatureVersion "2", Signature (base64
SHA256withRSA over SNS's string to sign), SigningCertURL and UnsubscribeURL.

- TopicArn is a pseudo topic per stream, arn:aws:sns:<region>:<account>:kvslite-<stream
  name>-notifications: there is no SNS topic, but a receiver that checks which topic a
  message came from gets one name per stream, the same on every node and after restarts.
- The signing key and its self-signed certificate are made once per deployment and kept as
  a server secret in the metadata store, so every node of a cluster signs with the same key;
  kvslite serves the certificate at SigningCertURL, <public URL>/sns/signing-cert.pem.
  Validators fetch it over https only: serve kvslite with TLS (or behind an https --public-url).
- UnsubscribeURL (<public URL>/sns/unsubscribe) unsubscribes nothing: it answers how to
  turn the stream's notification configuration off.
"""

from __future__ import annotations

import base64
import datetime
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

CERT_PATH = "/sns/signing-cert.pem"
UNSUBSCRIBE_PATH = "/sns/unsubscribe"
SECRET_NAME = "sns-signing-key"  # the key and the certificate, PEM, one after the other
SUBSCRIPTIONS = uuid.UUID("6b767369-736e-732d-7375-620000000000")  # namespace of their ids
CERT_YEARS = 20  # no rotation: a deployment keeps the key it made
# SNS's string to sign for a Notification: these fields in this order, Subject only if set
SIGNED_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")


def new_key_and_certificate() -> bytes:
    """A fresh RSA key and a self-signed certificate for it, both PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvslite notifications")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=365 * CERT_YEARS))
                   .sign(key, hashes.SHA256()))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()) + \
        certificate.public_bytes(serialization.Encoding.PEM)


class SnsSigner:
    """Signs notifications with the deployment's key; `certificate_pem` is what
    SigningCertURL serves."""

    def __init__(self, key_and_certificate: bytes, *, public_url: str):
        key = serialization.load_pem_private_key(key_and_certificate, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"the {SECRET_NAME} secret is not an RSA key")
        self._key: rsa.RSAPrivateKey = key
        begin = key_and_certificate.index(b"-----BEGIN CERTIFICATE-----")
        self.certificate_pem = key_and_certificate[begin:]
        self.public_url = public_url.rstrip("/")

    def headers(self, message: dict, subscription_arn: str) -> dict[str, str]:
        return {"Content-Type": "text/plain; charset=UTF-8",
                "x-amz-sns-message-type": message["Type"],
                "x-amz-sns-message-id": message["MessageId"],
                "x-amz-sns-topic-arn": message["TopicArn"],
                "x-amz-sns-subscription-arn": subscription_arn}

    def notification(self, *, message_id: str, topic_arn: str, subject: str, message: str,
                     timestamp: str, subscription_arn: str) -> dict:
        """The whole SNS Notification, signed, in SNS's field order."""
        fields = {"Type": "Notification", "MessageId": message_id, "TopicArn": topic_arn,
                  "Subject": subject, "Message": message, "Timestamp": timestamp}
        return {**fields, "SignatureVersion": "2", "Signature": self.signature(fields),
                "SigningCertURL": self.public_url + CERT_PATH,
                "UnsubscribeURL": f"{self.public_url}{UNSUBSCRIBE_PATH}"
                                  f"?SubscriptionArn={subscription_arn}"}

    def signature(self, fields: dict) -> str:
        signed = "".join(f"{name}\n{fields[name]}\n" for name in SIGNED_FIELDS
                         if fields.get(name) is not None)
        return base64.b64encode(self._key.sign(signed.encode(), padding.PKCS1v15(),
                                               hashes.SHA256())).decode()


def topic_arn(stream_arn: str, stream_name: str) -> str:
    """The stream's pseudo topic (see the module docstring), in the stream's region and
    account."""
    _, _, _, region, account, _ = stream_arn.split(":", 5)
    return f"arn:aws:sns:{region}:{account}:kvslite-{stream_name}-notifications"


def subscription_arn(topic: str, destination_uri: str) -> str:
    """The topic's pseudo subscription for one webhook: stable while the Uri is."""
    return f"{topic}:{uuid.uuid5(SUBSCRIPTIONS, f'{topic} {destination_uri}')}"
