"""Deliveries: the images and notifications a tagged fragment asks for, done from the
outbox after the PERSISTED ack, fairly across streams and within deadlines."""
