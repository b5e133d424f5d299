"""The `kinesisvideo` operations that configure fragment events: image generation into S3
and notifications (see kvslite.archive.events for what they do)."""

from __future__ import annotations

from kvslite.archive.control_plane import ControlPlane
from kvslite.archive.events import IMAGE_GENERATION, NOTIFICATION, EventConfigs
from kvslite.ops import requests as rq


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

    def _update(self, request, kind: str, config) -> dict:
        stream = self.control.resolve(request.stream_name, request.stream_arn)
        self.configs.update(stream, kind, None if config is None else rq.to_wire(config))
        return {}

    def _describe(self, request, kind: str, member: str) -> dict:
        stream = self.control.resolve(request.stream_name, request.stream_arn)
        config = self.configs.describe(stream, kind)
        return {member: config} if config is not None else {}

    def update_image_generation_configuration(
            self, request: rq.UpdateImageGenerationConfigurationInput) -> dict:
        return self._update(request, IMAGE_GENERATION, request.image_generation_configuration)

    def describe_image_generation_configuration(
            self, request: rq.DescribeImageGenerationConfigurationInput) -> dict:
        return self._describe(request, IMAGE_GENERATION, "ImageGenerationConfiguration")

    def update_notification_configuration(
            self, request: rq.UpdateNotificationConfigurationInput) -> dict:
        return self._update(request, NOTIFICATION, request.notification_configuration)

    def describe_notification_configuration(
            self, request: rq.DescribeNotificationConfigurationInput) -> dict:
        return self._describe(request, NOTIFICATION, "NotificationConfiguration")
