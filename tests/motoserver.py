"""``python tests/motoserver.py -H HOST -p PORT``: moto_server with one fix.

moto 5.2.5 keeps a launch template's UserData as the client sent it (a str) for
versions made by CreateLaunchTemplateVersion, while the Auto Scaling group's
launch path asserts the type CreateLaunchTemplate gives it (moto's
Base64EncodedString): a group on a template's second version fails every launch
with an internal error. Here both versions give the same type. Nothing else
differs from ``python -m moto.server``.
"""

from __future__ import annotations

import sys
from typing import Any

from moto.core.types import Base64EncodedString
from moto.ec2.models import launch_templates


def _user_data(self: Any) -> Base64EncodedString | None:
    value = self.data.get("UserData")
    if isinstance(value, str):
        self.data["UserData"] = value = Base64EncodedString(value)
    return value


launch_templates.LaunchTemplateVersion.user_data = property(_user_data)  # type: ignore[assignment,method-assign]

if __name__ == "__main__":
    from moto.server import main

    main(sys.argv[1:])
