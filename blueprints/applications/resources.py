"""Application & Profile service: `/cfg/apps...` (also served under `/applications`)."""

from __future__ import annotations

from flask import Response, request

from blueprints.applications.schemas import (
    ApplicationCreateSchema,
    ApplicationListSchema,
    ApplicationSchema,
    ApplicationUpdateSchema,
    CreatedApplicationSchema,
    ProfileListSchema,
    ProfileSchema,
    TagsQuerySchema,
    VersionCreateSchema,
    VersionListSchema,
    VersionRefSchema,
    VersionSchema,
)
from blueprints.common import Blueprint, Resource, catalogs, error_responses
from blueprints.security import audited
from ovas.errors import EditingDisabled
from ovas.models import Application, Version
from ovas.services import Page

blp = Blueprint(
    "applications",
    __name__,
    url_prefix="/cfg",
    description="Applications, their versions, and the profiles they can run with",
)


def _all(items: list) -> Page:
    return Page(offset=0, limit=len(items), items=items)


def _no_content() -> Response:
    return Response(status=204)


@blp.route("/apps")
class Applications(Resource):
    @blp.arguments(TagsQuerySchema(), location="query")
    @blp.response(200, ApplicationListSchema)
    @error_responses(blp)
    def get(self, query):
        """List applications, optionally only those carrying every given tag"""
        return _all(catalogs().list_applications(query["tags"]))

    @blp.arguments(ApplicationCreateSchema())
    @blp.response(201, CreatedApplicationSchema)
    @error_responses(blp, 405, 409)
    def post(self, body):
        """Add an application (editing must be enabled)"""
        app = Application(
            id=body["id"],
            name=body.get("name", body["id"]),
            description=body.get("description", ""),
            tags=tuple(body.get("tags", ())),
        )
        with audited("application.create", app=app.id):
            return catalogs().create_application(app)


@blp.route("/apps/<app_id>")
class ApplicationById(Resource):
    @blp.response(200, ApplicationSchema)
    @error_responses(blp, 404)
    def get(self, app_id):
        """Get one application"""
        return catalogs().get_application(app_id)

    @blp.arguments(ApplicationUpdateSchema())
    @blp.response(200, ApplicationSchema)
    @error_responses(blp, 404, 405)
    def put(self, body, app_id):
        """Change an application's name, description or tags (editing must be enabled)"""
        with audited("application.update", app=app_id):
            return catalogs().update_application(app_id, body)

    @blp.arguments(ApplicationUpdateSchema())
    @blp.response(200, ApplicationSchema)
    @error_responses(blp, 404, 405)
    def patch(self, body, app_id):
        """Change some of an application's fields (editing must be enabled)"""
        with audited("application.update", app=app_id):
            return catalogs().update_application(app_id, body)

    @blp.response(204)
    @error_responses(blp, 404, 405)
    def delete(self, app_id):
        """Remove an application and its versions; running sessions keep running"""
        with audited("application.delete", app=app_id):
            catalogs().delete_application(app_id)
        return _no_content()


@blp.route("/apps/<app_id>/versions")
class Versions(Resource):
    @blp.response(200, VersionListSchema)
    @error_responses(blp, 404)
    def get(self, app_id):
        """List an application's versions, newest first"""
        return _all(catalogs().list_versions(app_id))

    @blp.arguments(VersionCreateSchema())
    @blp.response(201, VersionRefSchema)
    @error_responses(blp, 404, 405, 409)
    def post(self, body, app_id):
        """Add a version to an application (editing must be enabled)"""
        with audited("version.create", app=app_id, version=body["version"]):
            return catalogs().create_version(Version(app_id=app_id, **body))

    @blp.arguments(VersionRefSchema())
    @blp.response(204)
    @error_responses(blp, 404, 405)
    def delete(self, body, app_id):
        """Remove the version named in the body (editing must be enabled)"""
        with audited("version.delete", app=app_id, version=body["version"]):
            catalogs().delete_version(app_id, body["version"])
        return _no_content()


@blp.route("/apps/<app_id>/versions/<version>")
class VersionById(Resource):
    @blp.response(200, VersionSchema)
    @error_responses(blp, 404)
    def get(self, app_id, version):
        """Get one version of an application"""
        return catalogs().get_version(app_id, version)

    @blp.response(204)
    @error_responses(blp, 404, 405)
    def delete(self, app_id, version):
        """Remove one version of an application (editing must be enabled)"""
        with audited("version.delete", app=app_id, version=version):
            catalogs().delete_version(app_id, version)
        return _no_content()


@blp.route("/apps/<app_id>/versions/<version>/profiles")
class Profiles(Resource):
    @blp.response(200, ProfileListSchema)
    @error_responses(blp, 404)
    def get(self, app_id, version):
        """List the profiles that support an application version (`*` stands for any)"""
        return _all(catalogs().list_profiles(app_id, version))


@blp.route("/apps/<app_id>/versions/<version>/profiles/<profile_id>")
class ProfileById(Resource):
    @blp.response(200, ProfileSchema)
    @error_responses(blp, 404)
    def get(self, app_id, version, profile_id):
        """Get one profile that supports an application version"""
        return catalogs().get_profile(app_id, version, profile_id)


@blp.before_request
def _editing_gate():
    # Answer 405 before the body is even validated, so a disabled service says why.
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and not catalogs().editing_enabled:
        raise EditingDisabled()
