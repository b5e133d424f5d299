"""The `kinesisvideo` operations that configure fragment events: image generation into S3
and notifications (see kvslite.server.archive.fragment_events for what they do)."""

from __future__ import annotations

from typing import cast

from kvslite.server.archive.control_plane import ControlPlane
from kvslite.server.archive.fragment_events import IMAGE_GENERATION, NOTIFICATION, EventConfigs
from kvslite.server.ops import requests as rq
from kvslite.server.ops import responses as rs
from kvslite.server.ops.wire import to_wire


class EventConfigurations:
    def __init__(self, control: ControlPlane, configs: EventConfigs):
        self.control = control
        self.configs = configs

    def operations(self) -> dict:
        return {
            "UpdateImageGenerationConfiguration": self.update_image_generation_configuration,
            "DescribeImageGenerationConfiguration":
                self.describe_image_generation_configuration,
            "UpdateNotificationConfiguration": self.update_notification_configuration,
            "DescribeNotificationConfiguration": self.describe_notification_configuration,
        }

    def _update(self, request, kind: str, config) -> None:
        stream = self.control.resolve(request.stream_name, request.stream_arn)
        self.configs.update(stream, kind, None if config is None else to_wire(config))

    def _stored(self, request, kind: str) -> dict | None:
        """The configuration as stored: the wire form of a checked request, so it has the
        output shape's members (the shapes are the same in the model); None if unset."""
        stream = self.control.resolve(request.stream_name, request.stream_arn)
        return self.configs.describe(stream, kind)

    def update_image_generation_configuration(
            self, request: rq.UpdateImageGenerationConfigurationInput
    ) -> rs.UpdateImageGenerationConfigurationOutput:
        self._update(request, IMAGE_GENERATION, request.image_generation_configuration)
        return {}

    def describe_image_generation_configuration(
            self, request: rq.DescribeImageGenerationConfigurationInput
    ) -> rs.DescribeImageGenerationConfigurationOutput:
        config = self._stored(request, IMAGE_GENERATION)
        return {"ImageGenerationConfiguration":
                cast("rs.ImageGenerationConfiguration | None", config)}

    def update_notification_configuration(
            self, request: rq.UpdateNotificationConfigurationInput
    ) -> rs.UpdateNotificationConfigurationOutput:
        self._update(request, NOTIFICATION, request.notification_configuration)
        return {}

    def describe_notification_configuration(
            self, request: rq.DescribeNotificationConfigurationInput
    ) -> rs.DescribeNotificationConfigurationOutput:
        config = self._stored(request, NOTIFICATION)
        return {"NotificationConfiguration": cast("rs.NotificationConfiguration | None", config)}
