"""A loopback stand-in for the Hugging Face Hub, for tests: a stdlib HTTP server on 127.0.0.1 that keeps repos.

It answers the endpoints the real, unpatched huggingface_hub 2.4 and transformers 5 clients use to create a repo,
push a folder and read it back, with the headers and JSON they parse:

    POST /api/repos/create                              create a repo (409 when it exists)
    POST /api/validate-yaml                             check README.md metadata (model-index shape included)
    POST /api/{type}s/{id}/branch/{branch}              create a branch from main
    POST /api/{type}s/{id}/preupload/{rev}              regular (base64 in the commit) or lfs (large/binary) per file
    GET  /api/{type}s/{id}/xet-{write,read}-token/{rev} a Xet CAS "server": local://<folder>, where hf_xet itself
                                                        keeps chunks (xorbs) and shards on disk
    POST /{id}.git/info/lfs/objects/batch + PUT         the Git LFS batch API (clients with HF_HUB_DISABLE_XET=1)
    POST /api/{type}s/{id}/commit/{rev}                 NDJSON commit: file / lfsFile / deletedFile / deletedFolder
    GET  /api/models/{id}[/revision/{rev}]              model_info with siblings, sha and the card's metadata
    GET  /api/{type}s/{id}/tree/{rev}[/{path}]          list_repo_tree (what snapshot_download lists)
    POST /api/{type}s/{id}/paths-info/{rev}             get_paths_info
    GET|HEAD /{id}/resolve/{rev}/{path}                 file bytes + X-Repo-Commit, ETag, X-Linked-Size/-Etag,
                                                        and X-Xet-Hash + a xet-auth Link for Xet-stored files

Xet: a commit names an lfsFile by sha256 only, as on the Hub. The Hub's CAS index maps that sha256 to the file's Xet
hash; here the same facts are read from the shard files hf_xet wrote into the local CAS folder (each file entry of a
shard carries its Xet hash, its segments and, in the metadata extension, its sha256). Downloads then go the real way:
HEAD gives X-Xet-Hash and the read-token route, and hf_xet reconstructs the file from the local CAS. A plain GET of a
Xet file (a client without hf_xet) is answered with bytes the emulator reconstructs through hf_xet too.

Tests can make it fail (`fail_with(500)`), require a token, and read `requests` (what was asked, with which status,
and whether the expected token came in the Authorization header). The token is kept in memory only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".pkl", ".png", ".jpg", ".jpeg", ".h5", ".onnx", ".msgpack"}
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub sends bigger files to LFS/Xet whatever their type
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in sorted(LFS_SUFFIXES))
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# /api/{type}s/{namespace}/{name}/{action}/{rest}
API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/([a-z-]+)(?:/(.*))?)?$")
LFS_BATCH = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+?)\.git/info/lfs/objects/batch$")
RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


@dataclass
class Entry:
    """A file in a commit: its bytes (regular files) or its sha256 (LFS), and its Xet hash when Xet stored it."""

    size: int
    blob_id: str  # git's sha1 of the content (regular) or of the LFS pointer (lfs), as the Hub reports it
    content: bytes | None = None
    sha256: str | None = None
    xet_hash: str | None = None


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    commits: dict[str, dict[str, Entry]] = field(default_factory=dict)  # sha -> path -> entry
    messages: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: hub_time())


@dataclass
class Request:
    method: str
    path: str  # with the query string
    status: int = 0
    authorized: bool = False  # the expected token came as "Authorization: Bearer <token>"


class HttpError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


def hub_time() -> str:
    """Now, as the Hub writes times (huggingface_hub parses exactly `%Y-%m-%dT%H:%M:%S.%fZ`)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def merkle_hex(raw: bytes) -> str:
    """Xet's hex form of a 32-byte hash: four little-endian u64 words, each printed as 16 hex digits."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


def read_shard_files(path: Path) -> dict[str, tuple[str, int]]:
    """sha256 → (Xet hash, size) for every file entry of one MDB shard that carries its sha256.

    Layout (xet-core's mdb_shard): a 48-byte header (32-byte tag, version u64, footer size u64), then per file a
    48-byte record — file hash, flags u32, entry count u32 — followed by that many 48-byte segment entries (the
    segment's byte count is the second u32 after its 32-byte xorb hash), as many verification entries when flag bit
    31 is set, and one metadata-extension entry starting with the sha256 when bit 30 is set. All-0xFF ends the list.
    """
    data = path.read_bytes()
    if not data.startswith(b"HFRepoMetaData\x00"):
        return {}
    found = {}
    pos = 48
    while pos + 48 <= len(data) and data[pos : pos + 32] != b"\xff" * 32:
        file_hash = data[pos : pos + 32]
        flags, entries = struct.unpack_from("<II", data, pos + 32)
        pos += 48
        size = sum(struct.unpack_from("<I", data, pos + i * 48 + 36)[0] for i in range(entries))
        pos += 48 * entries
        if flags & (1 << 31):
            pos += 48 * entries
        if flags & (1 << 30):
            found[merkle_hex(data[pos : pos + 32])] = (merkle_hex(file_hash), size)
            pos += 48
    return found


class HubEmulator:
    """Start with `with HubEmulator(tmp_path) as hub:`; point clients at `hub.url` (HF_ENDPOINT)."""

    def __init__(self, root: Path, token: str | None = None, user: str = "tester") -> None:
        self.root = Path(root)
        self.cas_dir = self.root / "cas"
        self.lfs_dir = self.root / "lfs"
        self.cas_dir.mkdir(parents=True, exist_ok=True)
        self.lfs_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Request] = []
        self.validated_yaml: list[str] = []
        self.errors: list[str] = []  # tracebacks of the emulator's own failures
        self._fail_status: int | None = None
        self._fail_left: int | None = None
        self._lock = threading.RLock()
        self._upload_secret = uuid.uuid4().hex  # "signs" the LFS upload URLs, as S3's presigned ones are
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.emulator = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, name="hub-emulator", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubEmulator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_with(self, status: int | None, times: int | None = None) -> None:
        """Answer the next `times` requests (all, when None) with `status`; `fail_with(None)` stops failing."""
        with self._lock:
            self._fail_status, self._fail_left = status, times

    # ----------------------------------------------------------------------------------- what tests read

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        """A repo made outside the clients, as if someone had created it on the website."""
        namespace, name = repo_id.split("/")
        self._create_repo({"name": name, "organization": namespace, "visibility": "private" if private else "public"})
        return self.repo(repo_id)

    def add_file(self, repo_id: str, path: str, content: bytes, revision: str = "main") -> str:
        """Commit one file to a branch outside the clients, as a user uploading it on the website would."""
        repo = self.repo(repo_id)
        with self._lock:
            files = {**repo.commits[repo.branches[revision]], path: Entry(len(content), git_blob_id(content), content)}
            repo.branches[revision] = self._new_commit(repo, files, f"Upload {path}")
        return repo.branches[revision]

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, Entry]:
        repo = self.repo(repo_id)
        return repo.commits[self._resolve_revision(repo, revision)]

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return self._content(self.files(repo_id, revision)[path])

    # ----------------------------------------------------------------------------------- dispatch

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        record = Request(method, raw_path)
        record.authorized = self.token is not None and headers.get("Authorization") == f"Bearer {self.token}"
        with self._lock:
            self.requests.append(record)
            # huggingface_hub 2.4 fetches an "agent harness" registry (best-effort telemetry, errors swallowed) on its
            # first request; kept out of failure injection so that "fail the next N requests" counts real calls
            telemetry = urlsplit(raw_path).path == "/api/agent-harnesses"
            failing = (
                not telemetry and self._fail_status is not None and (self._fail_left is None or self._fail_left > 0)
            )
            if failing and self._fail_left is not None:
                self._fail_left -= 1
        if failing:
            status, out_headers, out = self._fail_status or 500, {"Content-Type": "text/plain"}, b"Internal Error"
        else:
            try:
                status, out_headers, out = self._route(method, raw_path, headers, body, record.authorized)
            except HttpError as err:
                out_headers = {"Content-Type": "application/json", **err.headers}
                if err.code:
                    out_headers["X-Error-Code"] = err.code
                out_headers["X-Error-Message"] = err.message
                status, out = err.status, json.dumps({"error": err.message, **err.extra}).encode()
            except Exception:  # a bug in the emulator: tests assert `errors` is empty
                self.errors.append(traceback.format_exc())
                status, out_headers, out = 500, {"Content-Type": "text/plain"}, b"emulator error"
        record.status = status
        return status, out_headers, out

    def _route(
        self, method: str, raw_path: str, headers: Any, body: bytes, authorized: bool
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query)
        if method == "POST" and path == "/api/repos/create":
            self._require_auth(authorized)
            return self._json(self._create_repo(json.loads(body)))
        if method == "GET" and path == "/api/agent-harnesses":
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if method == "PUT" and path.startswith("/lfs-upload/"):
            return self._lfs_put(path.rsplit("/", 1)[1], query, body)
        if (m := LFS_BATCH.match(path)) and method == "POST":
            self._require_auth(authorized)
            repo = self._get_repo(REPO_TYPES.get(m.group(1) or "models", "model"), m.group(2), authorized)
            return self._json(self._lfs_batch(repo, json.loads(body)))
        if m := API_REPO.match(path):
            repo_type, repo_id, action, rest = REPO_TYPES[m.group(1)], m.group(2), m.group(3), m.group(4)
            return self._api(method, repo_type, repo_id, action, rest, query, headers, body, authorized)
        if (m := RESOLVE.match(path)) and method in ("GET", "HEAD"):
            repo = self._get_repo(REPO_TYPES.get(m.group(1) or "models", "model"), m.group(2), authorized)
            return self._resolve(repo, unquote(m.group(3)), unquote(m.group(4)), method, headers)
        raise HttpError(404, f"no route for {method} {path}")

    def _api(
        self,
        method: str,
        repo_type: str,
        repo_id: str,
        action: str | None,
        rest: str | None,
        query: dict[str, list[str]],
        headers: Any,
        body: bytes,
        authorized: bool,
    ) -> tuple[int, dict[str, str], bytes]:
        repo = self._get_repo(repo_type, repo_id, authorized)
        if method == "GET" and action in (None, "revision"):
            return self._json(self._info(repo, unquote(rest) if rest else "main"))
        if method == "GET" and action == "tree":
            revision, _, sub = (rest or "main").partition("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._json(self._tree(repo, unquote(revision), unquote(sub), recursive))
        if method == "POST" and action == "paths-info":
            form = parse_qs(body.decode())
            return self._json(self._paths_info(repo, unquote(rest or "main"), form.get("paths", [])))
        if method == "GET" and action in ("xet-write-token", "xet-read-token"):
            if action == "xet-write-token":
                self._require_auth(authorized)
            return self._xet_token()
        self._require_auth(authorized)
        if method == "POST" and action == "preupload":
            return self._json(self._preupload(repo, unquote(rest or "main"), json.loads(body)))
        if method == "POST" and action == "commit":
            return self._json(self._commit(repo, unquote(rest or "main"), body))
        if method == "POST" and action == "branch":
            payload = json.loads(body or b"{}")
            return self._json(self._branch(repo, unquote(rest or ""), payload.get("startingPoint")))
        raise HttpError(404, f"no route for {method} {action}")

    @staticmethod
    def _json(data: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps(data).encode()

    # ----------------------------------------------------------------------------------- repos

    def _require_auth(self, authorized: bool) -> None:
        if self.token is not None and not authorized:
            raise HttpError(401, "Invalid credentials in Authorization header")

    def _get_repo(self, repo_type: str, repo_id: str, authorized: bool) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _create_repo(self, payload: dict[str, Any]) -> dict[str, Any]:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.url}/{prefix}{repo_id}"
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                raise HttpError(409, "You already created this repo", extra={"url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = Repo(repo_id, repo_type, private)
            content = GITATTRIBUTES.encode()
            sha = self._new_commit(repo, {}, "initial commit")
            repo.commits[sha][".gitattributes"] = Entry(len(content), git_blob_id(content), content=content)
            repo.branches["main"] = sha
            self.repos[(repo_type, repo_id)] = repo
        return {"url": url, "name": repo_id, "id": uuid.uuid4().hex}

    def _branch(self, repo: Repo, branch: str, starting_point: str | None) -> dict[str, Any]:
        with self._lock:
            if branch in repo.branches:
                raise HttpError(409, f"Branch {branch} already exists")
            repo.branches[branch] = self._resolve_revision(repo, starting_point or "main")
        return {}

    def _new_commit(self, repo: Repo, files: dict[str, Entry], message: str) -> str:
        sha = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        repo.commits[sha] = dict(files)
        repo.messages[sha] = message
        return sha

    def _resolve_revision(self, repo: Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # ----------------------------------------------------------------------------------- uploads

    def _validate_yaml(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        import yaml

        content = payload.get("content", "")
        self.validated_yaml.append(content)
        errors = []
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        if match:
            try:
                meta = yaml.safe_load(match.group(1)) or {}
            except yaml.YAMLError as err:
                meta, errors = {}, [f"metadata is not valid YAML: {err}"]
            errors += _model_index_errors(meta.get("model-index")) if isinstance(meta, dict) else ["not a mapping"]
        body = {"errors": [{"message": e} for e in errors], "warnings": []}
        return 400 if errors else 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def _preupload(self, repo: Repo, revision: str, payload: dict[str, Any]) -> dict[str, Any]:
        current = repo.commits[self._resolve_revision(repo, revision)]
        files = []
        for f in payload["files"]:
            sample = base64.b64decode(f.get("sample", ""))
            lfs = Path(f["path"]).suffix.lower() in LFS_SUFFIXES or f["size"] >= LFS_THRESHOLD or b"\0" in sample
            existing = current.get(f["path"])
            oid = None if existing is None else existing.sha256 or existing.blob_id
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return {"files": files, "commitOid": self._resolve_revision(repo, revision)}

    def _lfs_batch(self, repo: Repo, payload: dict[str, Any]) -> dict[str, Any]:
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not (self.lfs_dir / oid).is_file():  # already stored: no actions, the client skips the upload
                href = f"{self.url}/lfs-upload/{oid}?size={size}&sig={self._upload_secret}"
                entry["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    def _lfs_put(self, oid: str, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if query.get("sig", [""])[0] != self._upload_secret:
            raise HttpError(403, "upload URL signature does not match")
        if hashlib.sha256(body).hexdigest() != oid or str(len(body)) != query.get("size", [""])[0]:
            raise HttpError(400, "uploaded content does not match the announced oid and size")
        (self.lfs_dir / oid).write_bytes(body)
        return 200, {"ETag": f'"{oid}"'}, b""

    def _xet_token(self) -> tuple[int, dict[str, str], bytes]:
        # local://<folder> makes hf_xet keep the CAS (chunks, xorbs, shards) in that folder instead of a server
        cas_url, token, expires = f"local://{self.cas_dir}", "emulator-xet-token", int(time.time()) + 3600
        headers = {
            "Content-Type": "application/json",
            "X-Xet-Cas-Url": cas_url,
            "X-Xet-Access-Token": token,
            "X-Xet-Token-Expiration": str(expires),
        }
        return 200, headers, json.dumps({"casUrl": cas_url, "accessToken": token, "exp": expires}).encode()

    def xet_index(self) -> dict[str, tuple[str, int]]:
        """sha256 → (Xet hash, size) of every file the local CAS knows, from hf_xet's shard files."""
        index: dict[str, tuple[str, int]] = {}
        for shard in sorted(self.cas_dir.rglob("*.mdb")):
            index.update(read_shard_files(shard))
        return index

    def _commit(self, repo: Repo, revision: str, body: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        with self._lock:
            if revision not in repo.branches:
                raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            parent = repo.branches[revision]
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise HttpError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[parent])
            xet: dict[str, tuple[str, int]] | None = None
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    content = base64.b64decode(value["content"])
                    files[value["path"]] = Entry(len(content), git_blob_id(content), content=content)
                elif key == "lfsFile":
                    sha256, size = value["oid"], value.get("size")
                    xet_hash = None
                    if (self.lfs_dir / sha256).is_file():
                        size = (self.lfs_dir / sha256).stat().st_size
                    else:
                        xet = self.xet_index() if xet is None else xet
                        if sha256 not in xet:
                            raise HttpError(
                                422,
                                f"Your push was rejected: {value['path']} points to an object that was not uploaded",
                            )
                        xet_hash, size = xet[sha256]
                    files[value["path"]] = Entry(size, git_blob_id(lfs_pointer(sha256, size)), None, sha256, xet_hash)
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: e for p, e in files.items() if not p.startswith(prefix)}
            sha = self._new_commit(repo, files, header.get("summary", ""))
            repo.branches[revision] = sha
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return {"commitUrl": f"{self.url}/{prefix}{repo.repo_id}/commit/{sha}", "commitOid": sha, "success": True}

    # ----------------------------------------------------------------------------------- reads

    def _info(self, repo: Repo, revision: str) -> dict[str, Any]:
        import yaml

        sha = self._resolve_revision(repo, revision)
        files = repo.commits[sha]
        meta: dict[str, Any] = {}
        if "README.md" in files:
            match = re.match(r"^---\s*\n(.*?)\n---", self._content(files["README.md"]).decode(), re.DOTALL)
            meta = (yaml.safe_load(match.group(1)) or {}) if match else {}
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": sha,
            "lastModified": hub_time(),
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(meta.get("tags") or []),
            "pipeline_tag": meta.get("pipeline_tag"),
            "library_name": meta.get("library_name"),
            "cardData": meta or None,
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }

    def _file_json(self, path: str, entry: Entry) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
        if entry.sha256:
            out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(lfs_pointer(entry.sha256, 0))}
        if entry.xet_hash:
            out["xetHash"] = entry.xet_hash
        return out

    def _tree(self, repo: Repo, revision: str, sub: str, recursive: bool) -> list[dict[str, Any]]:
        files = repo.commits[self._resolve_revision(repo, revision)]
        prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
        out, folders = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rel_parts = path[len(prefix) :].split("/")
            for depth in range(1, len(rel_parts)):
                folder = prefix + "/".join(rel_parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    out.append(
                        {
                            "type": "directory",
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                            "size": 0,
                            "path": folder,
                        }
                    )
            if recursive or len(rel_parts) == 1:
                out.append(self._file_json(path, files[path]))
        if prefix and not out:
            raise HttpError(404, f"{sub} not found", "EntryNotFound")
        return out

    def _paths_info(self, repo: Repo, revision: str, paths: list[str]) -> list[dict[str, Any]]:
        files = repo.commits[self._resolve_revision(repo, revision)]
        out = []
        for p in paths:
            if p in files:
                out.append(self._file_json(p, files[p]))
            elif any(f.startswith(p.rstrip("/") + "/") for f in files):
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
        return out

    def _content(self, entry: Entry) -> bytes:
        if entry.content is not None:
            return entry.content
        assert entry.sha256 is not None
        stored = self.lfs_dir / entry.sha256
        if stored.is_file():
            return stored.read_bytes()
        return self._from_xet(entry)

    def _from_xet(self, entry: Entry) -> bytes:
        """Rebuild a Xet-stored file from the local CAS, as the Hub's download bridge does for plain HTTP clients."""
        import hf_xet

        group = hf_xet.XetSession().new_download_stream_group(
            endpoint=f"local://{self.cas_dir}", token="emulator", token_expiry_unix_secs=int(time.time()) + 3600
        )
        return b"".join(group.download_stream(hf_xet.XetFileInfo(entry.xet_hash, entry.size)))

    def _resolve(
        self, repo: Repo, revision: str, path: str, method: str, headers: Any
    ) -> tuple[int, dict[str, str], bytes]:
        sha = self._resolve_revision(repo, revision)
        entry = repo.commits[sha].get(path)
        if entry is None:
            raise HttpError(404, f"{path} does not exist at {revision}", "EntryNotFound", {"X-Repo-Commit": sha})
        out = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if entry.sha256:
            out.update(
                {"ETag": f'"{entry.sha256}"', "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
            )
        else:
            out["ETag"] = f'"{entry.blob_id}"'
        if entry.xet_hash:
            route = f"{self.url}/api/{repo.repo_type}s/{repo.repo_id}/xet-read-token/{sha}"
            out.update(
                {"X-Xet-Hash": entry.xet_hash, "X-Xet-Refresh-Route": route, "Link": f'<{route}>; rel="xet-auth"'}
            )
        if method == "HEAD":
            out["Content-Length"] = str(entry.size)
            return 200, out, b""
        data = self._content(entry)
        start = re.fullmatch(r"bytes=(\d+)-", headers.get("Range") or "")
        if start:
            offset = int(start.group(1))
            out["Content-Range"] = f"bytes {offset}-{len(data) - 1}/{len(data)}"
            return 206, out, data[offset:]
        return 200, out, data


def _model_index_errors(index: Any) -> list[str]:
    """The shape the Hub insists on: model-index is a list of {name, results: [{task.type, dataset.{name,type},
    metrics: [{type, value}]}]}."""
    if index is None:
        return []
    errors = []
    if not isinstance(index, list):
        return ["model-index must be a list"]
    for model in index:
        if not isinstance(model, dict) or not model.get("name"):
            errors.append("model-index[]: name is required")
            continue
        for result in model.get("results") or []:
            if not (result.get("task") or {}).get("type"):
                errors.append("model-index[].results[].task.type is required")
            dataset = result.get("dataset") or {}
            if not dataset.get("name") or not dataset.get("type"):
                errors.append("model-index[].results[].dataset needs name and type")
            for metric in result.get("metrics") or []:
                if not metric.get("type") or not isinstance(metric.get("value"), (int, float)):
                    errors.append("model-index[].results[].metrics[] needs type and a numeric value")
    return errors


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx and hf_xet expect; every answer carries Content-Length

    def _serve(self) -> None:
        emulator: HubEmulator = self.server.emulator  # type: ignore[attr-defined]
        body = self._body()
        status, headers, out = emulator.handle(self.command, self.path, self.headers, body)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # the request log is `HubEmulator.requests`
        pass
