"""A small, stdlib-only fake Google Cloud Storage server for tests (loopback only).

One process serves the GCS JSON API subset used by
  * tensorstore's `gcs` kvstore driver (orbax array data, OCDBT manifests),
  * TensorFlow's built-in GCS filesystem (tf.io.gfile, tf.summary, and etils.epath
    for gs:// when TensorFlow is installed),
  * google-cloud-storage (orbax's hierarchical-namespace check), gcsfs.

Objects live in memory in the server process, so they survive the client
processes (kill -9 a training job, start a new one).  Generation numbers and the
ifGeneration(Not)Match / ifMetagenerationMatch preconditions are implemented
(tensorstore relies on them), and media downloads carry x-goog-generation.

TensorFlow's GCS client hard-codes https://www.googleapis.com and has no
endpoint override, so the same port also acts as an HTTPS proxy: clients with
HTTPS_PROXY=http://127.0.0.1:PORT and CURL_CA_BUNDLE=<ca.pem> send
`CONNECT www.googleapis.com:443`; the server answers with a certificate for that
name signed by a throw-away CA (made with the openssl CLI) and then serves the
decrypted requests itself.  CONNECT to any other host is refused.

Usage as a process (prints/writes a JSON line with the port and the env):
  python fake_gcs.py --ready-file /tmp/r.json --bucket my-bucket [--cert-dir D]
Usage in-process:
  srv = FakeGcsServer(buckets=['b'], cert_dir=d).start(); ...; srv.stop()
"""

from __future__ import annotations

import argparse
import base64
import datetime
import email.parser
import email.policy
import hashlib
import http.server
import json
import os
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib

_INTERCEPT_HOSTS = ('www.googleapis.com', 'storage.googleapis.com')


def make_certs(cert_dir: str) -> tuple[str, str, str]:
  """(ca.pem, leaf.pem, leaf.key): a throw-away CA and a leaf for googleapis."""
  os.makedirs(cert_dir, exist_ok=True)
  p = lambda n: os.path.join(cert_dir, n)
  if all(os.path.exists(p(n)) for n in ('ca.pem', 'leaf.pem', 'leaf.key')):
    return p('ca.pem'), p('leaf.pem'), p('leaf.key')

  def run(*a):
    subprocess.run(('openssl',) + a, check=True, capture_output=True)

  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', p('ca.key'),
      '-out', p('ca.pem'), '-days', '3650', '-subj', '/CN=fake-gcs test CA',
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', p('leaf.key'),
      '-out', p('leaf.csr'), '-subj', '/CN=www.googleapis.com')
  with open(p('ext.cnf'), 'w') as f:
    f.write('subjectAltName=' + ','.join('DNS:' + h for h in _INTERCEPT_HOSTS)
            + '\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n')
  run('x509', '-req', '-in', p('leaf.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'),
      '-CAcreateserial', '-out', p('leaf.pem'), '-days', '3650', '-extfile', p('ext.cnf'))
  return p('ca.pem'), p('leaf.pem'), p('leaf.key')


class _Obj:
  __slots__ = ('data', 'generation', 'metageneration', 'content_type', 'metadata',
               'updated')

  def __init__(self, data, generation, content_type, metadata):
    self.data = data
    self.generation = generation
    self.metageneration = 1
    self.content_type = content_type or 'application/octet-stream'
    self.metadata = metadata or {}
    self.updated = time.time()


def _rfc3339(t):
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
      '%Y-%m-%dT%H:%M:%S.%fZ')


class _Store:
  def __init__(self):
    self.lock = threading.Lock()
    self.buckets: dict[str, dict[str, _Obj]] = {}
    self.bucket_created: dict[str, float] = {}
    self.uploads: dict[str, dict] = {}
    self._gen = int(time.time() * 1e6)

  def next_gen(self):
    self._gen += 1
    return self._gen


class _Fail(Exception):
  def __init__(self, code, msg=''):
    super().__init__(msg)
    self.code, self.msg = code, msg


def _check_pre(obj, q, for_read=False):
  """GCS preconditions. ifGenerationMatch=0 means 'must not exist'."""
  def val(k):
    return int(q[k]) if k in q else None
  g = obj.generation if obj else 0
  m = val('ifGenerationMatch')
  if m is not None and m != g:
    raise _Fail(412, 'ifGenerationMatch')
  n = val('ifGenerationNotMatch')
  if n is not None and n == g:
    raise _Fail(304 if for_read else 412, 'ifGenerationNotMatch')
  mm = val('ifMetagenerationMatch')
  if mm is not None and (obj is None or mm != obj.metageneration):
    raise _Fail(412, 'ifMetagenerationMatch')
  mn = val('ifMetagenerationNotMatch')
  if mn is not None and obj is not None and mn == obj.metageneration:
    raise _Fail(304 if for_read else 412, 'ifMetagenerationNotMatch')


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'
  server_version = 'fake-gcs'
  disable_nagle_algorithm = True  # avoid 40 ms delayed-ACK stalls per response
  tls_host = None

  def log_message(self, fmt, *args):
    if self.server.verbose:
      sys.stderr.write('[fake-gcs] %s %s\n' % (
          'TLS' if self.tls_host else '   ', fmt % args))

  # ---------------- transport -------------------------------------------------
  def do_CONNECT(self):
    host = self.path.rsplit(':', 1)[0]
    if self.server.ssl_ctx is None or host not in _INTERCEPT_HOSTS:
      self.send_error(403, f'fake-gcs: no tunnel to {host}')
      self.close_connection = True
      return
    self.send_response(200, 'Connection established')
    self.end_headers()
    try:
      tls = self.server.ssl_ctx.wrap_socket(self.connection, server_side=True)
    except (ssl.SSLError, OSError):
      self.close_connection = True
      return
    self.connection = self.request = tls
    self.rfile = tls.makefile('rb', -1)
    self.wfile = socketserver._SocketWriter(tls)  # pylint: disable=protected-access
    self.tls_host = host
    self.close_connection = False

  def _body(self):
    if 'chunked' in self.headers.get('Transfer-Encoding', '').lower():
      out = []
      while True:
        size = int(self.rfile.readline().split(b';')[0].strip() or b'0', 16)
        if not size:
          while self.rfile.readline() not in (b'\r\n', b'\n', b''):
            pass
          return b''.join(out)
        out.append(self.rfile.read(size))
        self.rfile.readline()
    n = int(self.headers.get('Content-Length') or 0)
    data = self.rfile.read(n) if n else b''
    if self.headers.get('Content-Encoding', '') == 'gzip':
      data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
    return data

  def _send(self, code, body=b'', ctype='application/json', headers=()):
    if isinstance(body, (dict, list)):
      body = json.dumps(body).encode()
    self.send_response(code)
    for k, v in headers:
      self.send_header(k, v)
    if code not in (204, 304):
      self.send_header('Content-Type', ctype)
      self.send_header('Content-Length', str(len(body)))
    else:
      body = b''
    self.end_headers()
    if self.command != 'HEAD' and body:
      self.wfile.write(body)

  def _err(self, code, msg=''):
    if msg.startswith(('no route', 'no upload route', 'unsupported')):
      sys.stderr.write(f'[fake-gcs] UNSUPPORTED {self.command} {self.path}\n')
    if code in (304,):
      return self._send(code)
    self._send(code, {'error': {'code': code, 'message': msg or str(code),
                                'errors': [{'message': msg or str(code)}]}})

  def _base(self):
    host = self.headers.get('Host') or '127.0.0.1:%d' % self.server.server_address[1]
    return ('https://' if self.tls_host else 'http://') + host

  # ---------------- dispatch --------------------------------------------------
  def _dispatch(self):
    raw = self.path
    if '://' in raw:  # absolute-form (plain http proxying)
      raw = urllib.parse.urlunsplit(('', '') + urllib.parse.urlsplit(raw)[2:4] + ('',))
    path, _, query = raw.partition('?')
    q = {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
    body = self._body()  # always drain the body, or keep-alive framing breaks
    try:
      with self.server.store.lock:
        return self._route(path, q, body)
    except _Fail as e:
      return self._err(e.code, e.msg)

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

  def _route(self, path, q, body):
    # Object names may contain '/', which clients percent-encode: split the
    # raw path, then unquote.
    st = self.server.store
    m = self.command
    # strip known prefixes
    parts = path.split('/')
    if path in ('/', ''):
      return self._send(200, b'OK', 'text/plain')
    for prefix, kind in (('/upload/storage/v1/', 'upload'),
                         ('/download/storage/v1/', 'download'),
                         ('/storage/v1/', 'api')):
      if path.startswith(prefix):
        rest = path[len(prefix):]
        break
    else:
      # XML-API style /bucket/object download
      if m in ('GET', 'HEAD') and len(parts) >= 3:
        b, o = urllib.parse.unquote(parts[1]), urllib.parse.unquote('/'.join(parts[2:]))
        return self._download(b, o, q)
      return self._err(404, 'no route ' + path)
    rp = rest.split('/')  # raw (still percent-encoded) segments
    un = urllib.parse.unquote
    if rp[0] != 'b':
      return self._err(404, 'no route ' + path)
    if kind == 'upload':
      if len(rp) == 3 and rp[2] == 'o':
        return self._upload(un(rp[1]), q, body)
      return self._err(404, 'no upload route')
    if len(rp) == 1 or rp[1] == '':  # /b
      if m == 'POST':
        name = json.loads(body or b'{}').get('name')
        if name in st.buckets:
          return self._err(409, 'bucket exists')
        st.buckets[name] = {}
        st.bucket_created[name] = time.time()
        return self._send(200, self._bucket_res(name))
      return self._send(200, {'kind': 'storage#buckets',
                              'items': [self._bucket_res(n) for n in sorted(st.buckets)]})
    bucket = un(rp[1])
    if bucket not in st.buckets:
      return self._err(404, f'bucket {bucket} not found')
    if len(rp) == 2:
      if m == 'DELETE':
        del st.buckets[bucket]
        return self._send(204)
      return self._send(200, self._bucket_res(bucket))
    if rp[2] == 'storageLayout':  # TF's GCS filesystem asks before renaming dirs
      return self._send(200, {'kind': 'storage#storageLayout', 'bucket': bucket,
                              'location': 'US', 'locationType': 'multi-region',
                              'hierarchicalNamespace': {'enabled': False}})
    if rp[2] != 'o':
      return self._err(404, 'unsupported bucket sub-resource ' + rp[2])
    objs = st.buckets[bucket]
    if len(rp) == 3 or (len(rp) == 4 and rp[3] == ''):
      if m == 'GET':
        return self._list(bucket, q)
      if m == 'POST':
        return self._upload(bucket, q, body)
      return self._err(405)
    # /o/<name>[/rewriteTo|copyTo/b/<db>/o/<dname>] or /o/<name>/compose
    tail = rp[3:]
    for verb in ('rewriteTo', 'copyTo'):
      if verb in tail and m == 'POST':
        i = tail.index(verb)
        src = un('/'.join(tail[:i]))
        dbucket, dname = un(tail[i + 2]), un('/'.join(tail[i + 4:]))
        return self._copy(bucket, src, dbucket, dname, q, body, verb)
    if 'moveTo' in tail and m == 'POST':  # /o/<src>/moveTo/o/<dst> (gcsfs rename)
      i = tail.index('moveTo')
      src, dname = un('/'.join(tail[:i])), un('/'.join(tail[i + 2:]))
      so = objs.get(src)
      if so is None:
        raise _Fail(404, f'No such object: {bucket}/{src}')
      o = self._put(bucket, dname, so.data, q, so.content_type, dict(so.metadata))
      del objs[src]
      return self._send(200, self._obj_res(bucket, dname, o))
    if tail[-1] == 'compose' and m == 'POST':
      return self._compose(bucket, un('/'.join(tail[:-1])), q, body)
    name = un('/'.join(tail))
    obj = objs.get(name)
    if m in ('GET', 'HEAD'):
      if kind == 'download' or q.get('alt') == 'media':
        return self._download(bucket, name, q)
      if obj is None:
        return self._err(404, f'No such object: {bucket}/{name}')
      _check_pre(obj, q, for_read=True)
      return self._send(200, self._obj_res(bucket, name, obj))
    if m == 'DELETE':
      if obj is None:
        return self._err(404, f'No such object: {bucket}/{name}')
      _check_pre(obj, q)
      del objs[name]
      return self._send(204)
    if m in ('PATCH', 'PUT'):
      if obj is None:
        return self._err(404, f'No such object: {bucket}/{name}')
      _check_pre(obj, q)
      meta = json.loads(body or b'{}')
      if 'metadata' in meta:
        obj.metadata = {**obj.metadata, **(meta['metadata'] or {})}
      if 'contentType' in meta:
        obj.content_type = meta['contentType']
      obj.metageneration += 1
      return self._send(200, self._obj_res(bucket, name, obj))
    return self._err(405)

  # ---------------- resources -------------------------------------------------
  def _bucket_res(self, name):
    t = _rfc3339(self.server.store.bucket_created.get(name, time.time()))
    return {'kind': 'storage#bucket', 'id': name, 'name': name,
            'projectNumber': '0', 'metageneration': '1', 'location': 'US',
            'storageClass': 'STANDARD', 'etag': 'CAE=', 'timeCreated': t,
            'updated': t, 'locationType': 'multi-region',
            'iamConfiguration': {'uniformBucketLevelAccess': {'enabled': True}}}

  def _obj_res(self, bucket, name, o):
    res = {
        'kind': 'storage#object', 'bucket': bucket, 'name': name,
        'id': f'{bucket}/{name}/{o.generation}',
        'selfLink': f'{self._base()}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe="")}',
        'mediaLink': (f'{self._base()}/download/storage/v1/b/{bucket}/o/'
                      f'{urllib.parse.quote(name, safe="")}?generation={o.generation}&alt=media'),
        'generation': str(o.generation), 'metageneration': str(o.metageneration),
        'contentType': o.content_type, 'size': str(len(o.data)),
        'md5Hash': base64.b64encode(hashlib.md5(o.data).digest()).decode(),
        'etag': base64.b64encode(str(o.generation).encode()).decode(),
        'storageClass': 'STANDARD',
        'timeCreated': _rfc3339(o.updated), 'updated': _rfc3339(o.updated),
    }
    crc32c = _crc32c(o.data)
    if crc32c is not None:
      res['crc32c'] = crc32c
    if o.metadata:
      res['metadata'] = o.metadata
    return res

  def _put(self, bucket, name, data, q, content_type=None, metadata=None):
    st = self.server.store
    if bucket not in st.buckets:
      raise _Fail(404, f'bucket {bucket} not found')
    objs = st.buckets[bucket]
    _check_pre(objs.get(name), q)
    o = _Obj(data, st.next_gen(), content_type, metadata)
    objs[name] = o
    return o

  # ---------------- operations ------------------------------------------------
  def _download(self, bucket, name, q):
    objs = self.server.store.buckets.get(bucket)
    if objs is None:
      return self._err(404, f'bucket {bucket} not found')
    o = objs.get(name)
    if o is None:
      return self._err(404, f'No such object: {bucket}/{name}')
    if 'generation' in q and int(q['generation']) != o.generation:
      return self._err(404, 'generation not found')
    _check_pre(o, q, for_read=True)
    hdrs = [('x-goog-generation', str(o.generation)),
            ('x-goog-metageneration', str(o.metageneration)),
            ('x-goog-stored-content-length', str(len(o.data))),
            ('x-goog-stored-content-encoding', 'identity'),
            ('ETag', '"%s"' % o.generation)]
    c = _crc32c(o.data)
    hdrs.append(('x-goog-hash', 'md5=' + base64.b64encode(hashlib.md5(o.data).digest()).decode()
                 + (f',crc32c={c}' if c else '')))
    data, code = o.data, 200
    rng = self.headers.get('Range')
    if rng and rng.startswith('bytes='):
      spec = rng[6:].split(',')[0].strip()
      a, _, b = spec.partition('-')
      n = len(data)
      if a == '':  # suffix range
        start, end = max(0, n - int(b)), n - 1
      else:
        start = int(a)
        end = min(int(b), n - 1) if b else n - 1
      if start >= n and n > 0:
        return self._send(416, b'', headers=[('Content-Range', f'bytes */{n}')] + hdrs)
      if n == 0:
        start, end = 0, -1
      data, code = data[start:end + 1], 206
      hdrs.append(('Content-Range', f'bytes {start}-{end}/{n}'))
    return self._send(code, data, o.content_type, hdrs)

  def _list(self, bucket, q):
    objs = self.server.store.buckets[bucket]
    prefix, delim = q.get('prefix', ''), q.get('delimiter', '')
    start, end = q.get('startOffset') or None, q.get('endOffset') or None
    token = q.get('pageToken') or None
    maxr = int(q.get('maxResults') or 1000)
    entries = []  # (key, is_prefix), in order, prefixes collapsed
    for n in sorted(objs):
      if not n.startswith(prefix) or (start and n < start) or (end and n >= end):
        continue
      if delim:
        i = n.find(delim, len(prefix))
        if i >= 0:
          p = n[:i + len(delim)]
          if not entries or entries[-1] != (p, True):
            entries.append((p, True))
          continue
      entries.append((n, False))
    if token:
      entries = [e for e in entries if e[0] > token]
    page, more = entries[:maxr], len(entries) > maxr
    res = {'kind': 'storage#objects',
           'items': [self._obj_res(bucket, k, objs[k]) for k, isp in page if not isp]}
    prefixes = [k for k, isp in page if isp]
    if prefixes:
      res['prefixes'] = prefixes
    if more:
      res['nextPageToken'] = page[-1][0]
    return self._send(200, res)

  def _upload(self, bucket, q, body):
    st = self.server.store
    utype = q.get('uploadType', 'media')
    ctype = self.headers.get('Content-Type', '')
    if utype == 'resumable':
      if 'upload_id' in q:
        return self._resumable_put(bucket, q, body)
      meta = json.loads(body) if body.strip() else {}
      name = q.get('name') or meta.get('name')
      if not name:
        raise _Fail(400, 'missing object name')
      uid = '%x' % st.next_gen()
      st.uploads[uid] = {'bucket': bucket, 'name': name, 'q': dict(q), 'buf': bytearray(),
                         'ctype': self.headers.get('X-Upload-Content-Type') or meta.get('contentType'),
                         'metadata': meta.get('metadata')}
      loc = (f'{self._base()}/upload/storage/v1/b/{urllib.parse.quote(bucket)}/o?'
             f'uploadType=resumable&upload_id={uid}')
      return self._send(200, b'', 'text/plain', [('Location', loc), ('X-GUploader-UploadID', uid)])
    if utype == 'multipart':
      msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
          b'Content-Type: ' + ctype.encode() + b'\r\n\r\n' + body)
      parts = list(msg.iter_parts())
      meta = json.loads(parts[0].get_content()) if parts else {}
      data = parts[1].get_payload(decode=True) if len(parts) > 1 else b''
      name = q.get('name') or meta.get('name')
      o = self._put(bucket, name, data or b'', q,
                    meta.get('contentType') or (parts[1].get_content_type() if len(parts) > 1 else None),
                    meta.get('metadata'))
      return self._send(200, self._obj_res(bucket, name, o))
    name = q.get('name')
    if not name:
      raise _Fail(400, 'missing object name')
    o = self._put(bucket, name, body, q, ctype or None)
    return self._send(200, self._obj_res(bucket, name, o))

  def _resumable_put(self, bucket, q, body):
    st = self.server.store
    up = st.uploads.get(q['upload_id'])
    if up is None:
      raise _Fail(404, 'no such upload')
    cr = self.headers.get('Content-Range', '')
    total = None
    if cr.startswith('bytes '):
      rng, _, tot = cr[6:].partition('/')
      total = None if tot == '*' else int(tot)
      if rng != '*':
        a, _, _b = rng.partition('-')
        a = int(a)
        if a < len(up['buf']):  # retransmission: drop what we already have
          body = body[len(up['buf']) - a:]
        elif a > len(up['buf']):
          raise _Fail(400, 'gap in resumable upload')
        up['buf'] += body
    else:
      up['buf'] += body
      total = len(up['buf'])
    if total is not None and len(up['buf']) >= total:
      del st.uploads[q['upload_id']]
      o = self._put(up['bucket'], up['name'], bytes(up['buf'][:total]), up['q'],
                    up['ctype'], up['metadata'])
      return self._send(200, self._obj_res(up['bucket'], up['name'], o))
    hdrs = [('Range', f'bytes=0-{len(up["buf"]) - 1}')] if up['buf'] else []
    return self._send(308, b'', 'text/plain', hdrs)

  def _copy(self, bucket, src, dbucket, dname, q, body, verb):
    st = self.server.store
    so = st.buckets.get(bucket, {}).get(src)
    if so is None:
      raise _Fail(404, f'No such object: {bucket}/{src}')
    if 'ifSourceGenerationMatch' in q and int(q['ifSourceGenerationMatch']) != so.generation:
      raise _Fail(412, 'ifSourceGenerationMatch')
    meta = json.loads(body) if body.strip() else {}
    o = self._put(dbucket, dname, so.data, q, meta.get('contentType') or so.content_type,
                  meta.get('metadata') or dict(so.metadata))
    res = self._obj_res(dbucket, dname, o)
    if verb == 'rewriteTo':
      n = str(len(so.data))
      return self._send(200, {'kind': 'storage#rewriteResponse', 'totalBytesRewritten': n,
                              'objectSize': n, 'done': True, 'resource': res})
    return self._send(200, res)

  def _compose(self, bucket, dname, q, body):
    st = self.server.store
    req = json.loads(body or b'{}')
    data = b''
    for s in req.get('sourceObjects', []):
      so = st.buckets[bucket].get(s['name'])
      if so is None:
        raise _Fail(404, f'No such object: {bucket}/{s["name"]}')
      data += so.data
    dest = req.get('destination') or {}
    o = self._put(bucket, dname, data, q, dest.get('contentType'), dest.get('metadata'))
    return self._send(200, self._obj_res(bucket, dname, o))


try:  # google_crc32c is optional (installed with google-cloud-storage)
  import google_crc32c as _gcrc  # pylint: disable=g-import-not-at-top

  def _crc32c(data):
    return base64.b64encode(_gcrc.value(data).to_bytes(4, 'big')).decode()
except ImportError:  # clients only verify crc32c when it is present
  def _crc32c(data):
    del data
    return None


class FakeGcsServer(http.server.ThreadingHTTPServer):
  """In-memory fake GCS + HTTPS intercept for googleapis, on 127.0.0.1."""
  daemon_threads = True
  allow_reuse_address = True

  def __init__(self, port=0, buckets=(), cert_dir=None, verbose=False):
    super().__init__(('127.0.0.1', port), _Handler)
    self.store = _Store()
    for b in buckets:
      self.store.buckets[b] = {}
      self.store.bucket_created[b] = time.time()
    self.verbose = verbose
    self.ssl_ctx = None
    self.ca_file = None
    if cert_dir:
      ca, leaf, key = make_certs(cert_dir)
      ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
      ctx.load_cert_chain(leaf, key)
      self.ssl_ctx, self.ca_file = ctx, ca
    self._thread = None

  @property
  def url(self):
    return 'http://127.0.0.1:%d' % self.server_address[1]

  def client_env(self) -> dict[str, str]:
    """Environment for client processes (tensorstore, TF, google-cloud-storage)."""
    env = {
        'TENSORSTORE_GCS_HTTP_URL': self.url,       # tensorstore gcs driver
        'STORAGE_EMULATOR_HOST': self.url,          # google-cloud-storage, gcsfs
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'fake',    # TF + tensorstore: no credential lookup
        'NO_GCE_CHECK': 'true',                     # TF: never probe the metadata server
        'GCE_METADATA_HOST': '127.0.0.1:9',         # belt and braces (port 9 = discard)
        'GCE_METADATA_ROOT': '127.0.0.1:9',
        'GCS_RETRY_CONFIG_MAX_RETRIES': '2',        # TF: fail in ~1 s, not ~200 s
        'GCS_STAT_CACHE_MAX_AGE': '0',              # TF caches stat() 5 s per process
        'NO_PROXY': '127.0.0.1,localhost', 'no_proxy': '127.0.0.1,localhost',
    }
    if self.ca_file:
      env.update({'HTTPS_PROXY': self.url, 'https_proxy': self.url,
                  'CURL_CA_BUNDLE': self.ca_file})
    return env

  def handle_error(self, request, client_address):
    if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
      return  # a client went away (e.g. a SIGKILLed job): not a server error
    super().handle_error(request, client_address)

  def start(self):
    self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                    name='fake-gcs')
    self._thread.start()
    return self

  def stop(self):
    self.shutdown()
    self.server_close()


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--port', type=int, default=0)
  ap.add_argument('--bucket', action='append', default=[])
  ap.add_argument('--cert-dir', help='enables the HTTPS intercept (needs openssl)')
  ap.add_argument('--ready-file', help='JSON with url/pid/env, written when serving')
  ap.add_argument('--verbose', action='store_true')
  a = ap.parse_args()
  t0 = time.monotonic()
  srv = FakeGcsServer(a.port, a.bucket, a.cert_dir, a.verbose).start()
  info = {'url': srv.url, 'pid': os.getpid(), 'env': srv.client_env(),
          'startup_s': round(time.monotonic() - t0, 3)}
  if a.ready_file:
    tmp = a.ready_file + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(info, f, indent=1)
    os.replace(tmp, a.ready_file)
  print(json.dumps(info), flush=True)
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  signal.signal(signal.SIGINT, lambda *_: stop.set())
  stop.wait()
  srv.stop()


if __name__ == '__main__':
  main()
