"""Shapes of the Application & Profile service, as OVAS clients read them."""

from __future__ import annotations

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate


class ApplicationSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    description = fields.String()
    tags = fields.List(fields.String())


class VersionSchema(Schema):
    version = fields.String(required=True)
    container = fields.String()
    container_version = fields.String()
    helm_chart = fields.String()
    helm_chart_version = fields.String()


class ProfileSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    description = fields.String()


def _page(item_schema: type[Schema], name: str) -> type[Schema]:
    return Schema.from_dict(
        {
            "offset": fields.Integer(required=True),
            "limit": fields.Integer(required=True),
            "count": fields.Integer(required=True),
            "items": fields.List(fields.Nested(item_schema), required=True),
        },
        name=name,
    )


ApplicationListSchema = _page(ApplicationSchema, "ApplicationList")
VersionListSchema = _page(VersionSchema, "VersionList")
ProfileListSchema = _page(ProfileSchema, "ProfileList")


class TagsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    tags = fields.List(
        fields.String(validate=validate.Length(max=256)),
        load_default=list,
        metadata={"description": "Keep apps carrying every tag (repeated or comma-separated)"},
    )


_TEXT = validate.Length(max=1024)


class ApplicationUpdateSchema(Schema):
    class Meta:
        unknown = RAISE

    id = fields.String(validate=validate.Length(min=1, max=63))
    name = fields.String(validate=validate.Length(max=256))
    description = fields.String(validate=_TEXT)
    tags = fields.List(
        fields.String(validate=validate.Length(min=1, max=63)),
        validate=validate.Length(max=64),
    )


class ApplicationCreateSchema(ApplicationUpdateSchema):
    id = fields.String(required=True, validate=validate.Length(min=1, max=63))


class CreatedApplicationSchema(Schema):
    id = fields.String(required=True)


class VersionCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    version = fields.String(required=True, validate=validate.Length(min=1, max=128))
    container = fields.String(load_default="", validate=validate.Length(max=512))
    container_version = fields.String(load_default="", validate=validate.Length(max=128))
    helm_chart = fields.String(load_default="", validate=validate.Length(max=512))
    helm_chart_version = fields.String(load_default="", validate=validate.Length(max=128))


class VersionRefSchema(Schema):
    class Meta:
        unknown = RAISE

    version = fields.String(required=True, validate=validate.Length(min=1, max=128))
