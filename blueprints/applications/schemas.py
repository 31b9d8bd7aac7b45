"""Shapes of the Application & Profile service, as OVAS clients read them."""

from __future__ import annotations

import dataclasses

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
    base = Schema.from_dict(
        {
            "offset": fields.Integer(required=True),
            "limit": fields.Integer(required=True),
            "count": fields.Integer(required=True),
            "items": fields.List(fields.Nested(item_schema), required=True),
        },
        name=name,
    )
    names = tuple(item_schema().fields)
    exact: dict[type, bool] = {}  # item types whose dataclass fields are exactly `names`

    def dump(self, page, *, many=None):
        # Lists are read often and their items are flat: hand over a dataclass holding exactly
        # the documented fields for orjson to write, else copy those attributes, rather than
        # walk marshmallow's fields (tests/test_catalog_api.py checks every field of every item).
        items = page.items
        if items and not exact.setdefault(
            type(items[0]), tuple(f.name for f in dataclasses.fields(items[0])) == names
        ):
            items = [{n: _plain(getattr(item, n)) for n in names} for item in items]
        return {"offset": page.offset, "limit": page.limit, "count": page.count, "items": items}

    return type(name, (base,), {"dump": dump})


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


ApplicationListSchema = _page(ApplicationSchema, "ApplicationList")
VersionListSchema = _page(VersionSchema, "VersionList")
ProfileListSchema = _page(ProfileSchema, "ProfileList")


class TagsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    def load(self, data, **kwargs):
        # Most calls carry no query string: answer the default without the field walk.
        if not data:
            return {"tags": []}
        return super().load(data, **kwargs)

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
