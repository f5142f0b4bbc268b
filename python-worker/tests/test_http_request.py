"""The HTTP side of a request: repeated query keys, form and multipart bodies, the
response's Content-Type header, the shape of a service's 405.

The dispatcher is driven directly with CALL metas as the server builds them (edge/http.rs);
integration/tests/http.rs checks the same over HTTP.
"""

import pytest

from oxbus import MethodNotAllowed, Service
from oxbus.errors import BadRequest
from oxbus.forms import MAX_FORM_PARTS, MultiDict, UploadedFile, parse_form, parse_query
from test_service import call


def form_headers(content_type):
    return [['content-type', content_type]]


# -- the query string ----------------------------------------------------------------------


class Query(Service):
    def handle(self):
        q = self.request.http.query
        self.response.payload = {'one': q.get('k'), 'all': q.getlist('k'),
                                 'none': q.getlist('absent'), 'attr': q.x,
                                 'zato': self.request.http.GET.getlist('k')}


def test_repeated_query_keys_last_wins_and_getlist_has_every_value():
    r = call(Query, query='k=1&x=y&k=2&k=&k=%C3%A9')
    assert r.status == 200
    assert r.doc == {'one': 'é', 'all': ['1', '2', '', 'é'], 'none': [], 'attr': 'y',
                     'zato': ['1', '2', '', 'é']}


def test_query_without_a_query_string_is_an_empty_multidict():
    q = parse_query('')
    assert q == {} and q.getlist('k') == []
    assert isinstance(q, MultiDict)


def test_simpleio_input_from_the_query_keeps_the_last_value():
    class In(Service):
        input = 'k'

        def handle(self):
            self.response.payload = {'k': self.request.input.k}

    assert call(In, method='GET', query='k=a&k=b').doc == {'k': 'b'}


def test_simpleio_list_reads_every_value_of_a_repeated_key():
    from oxbus.simpleio import List

    class Tags(Service):
        input = List('tags'), '-one'

        def handle(self):
            self.response.payload = dict(self.request.input)

    urlenc = form_headers('application/x-www-form-urlencoded')
    assert call(Tags, method='GET', query='tags=a&tags=b&one=x&one=y').doc == {
        'tags': ['a', 'b'], 'one': 'y'}
    assert call(Tags, body=b'tags=a&tags=b&one=x&one=y', headers=urlenc).doc == {
        'tags': ['a', 'b'], 'one': 'y'}
    body, ct = multipart([(['Content-Disposition: form-data; name="tags"'], b'a'),
                          (['Content-Disposition: form-data; name="tags"'], b'b')])
    assert call(Tags, body=body, headers=form_headers(ct)).doc == {
        'tags': ['a', 'b'], 'one': None}
    # One value is a list of one; a JSON list is as it came.
    assert call(Tags, method='GET', query='tags=a').doc['tags'] == ['a']
    assert call(Tags, body=b'{"tags": ["a", "b"]}').doc['tags'] == ['a', 'b']


def test_too_many_query_fields_is_a_400():
    r = call(Query, query='&'.join('k=%d' % i for i in range(1001)))
    assert r.status == 400
    assert 'more than 1000 fields' in r.doc['error']


# -- form bodies ---------------------------------------------------------------------------


class Form(Service):
    def handle(self):
        form, files = self.request.form, self.request.files
        self.response.payload = {
            'fields': form.items_all(), 'tag': form.getlist('tag'),
            'payload': dict(self.request.payload) if isinstance(self.request.payload, dict)
            else repr(self.request.payload),
            'raw': len(self.request.raw),
            'files': [[f.name, f.filename, f.content_type, f.data.decode('latin-1'), f.size]
                      for _, f in files.items_all()]}


def test_urlencoded_body_is_the_form_and_the_payload():
    body = b'name=Ann+Lee&tag=a&tag=b&empty=&caf%C3%A9=%E2%82%AC'
    r = call(Form, body=body,
             headers=form_headers('application/x-www-form-urlencoded; charset=utf-8'))
    assert r.status == 200, r.doc
    assert r.doc['fields'] == [['name', 'Ann Lee'], ['tag', 'a'], ['tag', 'b'],
                               ['empty', ''], ['café', '€']]
    assert r.doc['tag'] == ['a', 'b']
    assert r.doc['payload'] == {'name': 'Ann Lee', 'tag': 'b', 'empty': '', 'café': '€'}
    assert r.doc['raw'] == len(body) and r.doc['files'] == []


def multipart(parts, boundary='XyZ-123'):
    out = []
    for headers, data in parts:
        out.append(b'--' + boundary.encode() + b'\r\n')
        out.extend(h.encode('utf-8') + b'\r\n' for h in headers)
        out.append(b'\r\n' + data + b'\r\n')
    out.append(b'--' + boundary.encode() + b'--\r\n')
    return b''.join(out), 'multipart/form-data; boundary="%s"' % boundary


def test_multipart_fields_and_files():
    blob = bytes(range(256)) + b'\r\n--XyZ-12\r\n'  # CRLFs and a near-boundary inside
    body, ct = multipart([
        (['Content-Disposition: form-data; name="title"'], 'Relevé'.encode()),
        (['Content-Disposition: form-data; name="tag"'], b'a'),
        (['Content-Disposition: form-data; name="tag"'], b'b'),
        (['Content-Disposition: form-data; name="doc"; filename="r\u00e9sum\u00e9.pdf"',
          'Content-Type: application/pdf'], blob),
        (['Content-Disposition: form-data; name="doc"; filename="a \\"q\\".txt"'], b''),
        (["Content-Disposition: form-data; name=\"x\"; filename=\"fallback\"; "
          "filename*=UTF-8''%E2%82%AC.txt"], b'euro'),
    ])
    r = call(Form, body=b'preamble\r\n' + body, headers=form_headers(ct))
    assert r.status == 200, r.doc
    assert r.doc['fields'] == [['title', 'Relevé'], ['tag', 'a'], ['tag', 'b']]
    assert r.doc['payload'] == {'title': 'Relevé', 'tag': 'b'}
    assert r.doc['files'] == [
        ['doc', 'résumé.pdf', 'application/pdf', blob.decode('latin-1'), len(blob)],
        ['doc', 'a "q".txt', 'application/octet-stream', '', 0],
        ['x', '€.txt', 'application/octet-stream', 'euro', 4]]


def test_simpleio_input_from_a_form_body():
    class Typed(Service):
        input = 'name', 'age_count', '-nick'

        def handle(self):
            self.response.payload = dict(self.request.input)

    r = call(Typed, body=b'name=Ann&age_count=42', headers=form_headers(
        'application/x-www-form-urlencoded'))
    assert r.doc == {'name': 'Ann', 'age_count': 42, 'nick': None}
    r = call(Typed, body=b'name=Ann&age_count=old', headers=form_headers(
        'application/x-www-form-urlencoded'))
    assert r.status == 400 and r.doc['field'] == 'age_count'


def test_a_raw_channel_parses_the_form_on_demand():
    body, ct = multipart([(['Content-Disposition: form-data; name="a"'], b'1')])
    r = call(Form, body=body, headers=form_headers(ct), data_format='raw')
    assert r.doc['fields'] == [['a', '1']]
    assert r.doc['payload'].startswith("b'--XyZ-123")  # the payload stays the bytes


def test_a_json_body_or_no_content_type_has_an_empty_form():
    r = call(Form, body=b'{"a": 1}', headers=form_headers('application/json'))
    assert r.doc['fields'] == [] and r.doc['payload'] == {'a': 1}
    r = call(Form, body=b'{"a": 1}', headers=None)
    assert r.doc['fields'] == [] and r.doc['files'] == []
    # Not JSON and not a form: the JSON error, as before.
    r = call(Form, body=b'a=1', headers=form_headers('text/plain'))
    assert r.status == 400 and r.doc['error'].startswith('malformed JSON')


@pytest.mark.parametrize('body', [
    b'{"name": "Ann", "age": 4', b'  \r\n{"name": "Ann",}', b'[1, 2', b'"text',
])
def test_broken_json_sent_as_a_form_is_the_json_error(body):
    # `curl -d` sends application/x-www-form-urlencoded by default: a body that starts
    # like JSON is broken JSON, never a form with junk field names.
    class Typed(Service):
        input = '-name'

        def handle(self):
            self.response.payload = {'payload': self.request.payload}

    for svc in (Form, Typed):
        r = call(svc, body=body, headers=form_headers('application/x-www-form-urlencoded'))
        assert r.status == 400, r.doc
        assert r.doc['error'].startswith('malformed JSON'), r.doc


@pytest.mark.parametrize('head', [
    b'Content-Disposition: form-data; ' + b'a=b;' * 5000 + b'name="a"',
    b'Content-Disposition: form-data; name="a"; filename="' + b'a' * 20000 + b'"',
    b'X: y\r\n' * 4000 + b'Content-Disposition: form-data; name="a"',
])
def test_a_parts_headers_past_the_cap_are_a_400(head):
    from oxbus.forms import MAX_PART_HEADER_BYTES
    assert len(head) > MAX_PART_HEADER_BYTES
    body = b'--B\r\n' + head + b'\r\n\r\nx\r\n--B--'
    with pytest.raises(BadRequest, match='more than 16384 bytes of headers'):
        parse_form('multipart/form-data; boundary=B', body)
    # Within the cap, the same kind of part is read.
    ok = b'Content-Disposition: form-data; name="a"; filename="' + b'a' * 16000 + b'"'
    fields, files = parse_form('multipart/form-data; boundary=B',
                               b'--B\r\n' + ok + b'\r\n\r\nx\r\n--B--')
    assert files['a'].filename == 'a' * 16000


@pytest.mark.parametrize('body,ct,why', [
    (b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n',
     'multipart/form-data; boundary=b', 'no closing boundary'),
    (b'--b\r\nContent-Disposition: form-data; name="a"\r\n1\r\n--b--',
     'multipart/form-data; boundary=b', 'no empty line after its headers'),
    (b'--b\r\nContent-Type: text/plain\r\n\r\n1\r\n--b--',
     'multipart/form-data; boundary=b', 'no Content-Disposition'),
    (b'--b\r\nContent-Disposition: attachment\r\n\r\n1\r\n--b--',
     'multipart/form-data; boundary=b', 'not form-data with a name'),
    (b'a=1', 'multipart/form-data', 'names no boundary'),
    (b'a=1', 'multipart/form-data; boundary=b', 'no boundary line'),
    (b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n\xff\r\n--b--',
     'multipart/form-data; boundary=b', "field 'a' is not valid utf-8 text"),
])
def test_a_malformed_form_is_a_400_saying_why(body, ct, why):
    r = call(Form, body=body, headers=form_headers(ct))
    assert r.status == 400, r.doc
    assert why in r.doc['error'], r.doc
    # The same from a raw channel, where the form is parsed when the service reads it.
    r = call(Form, body=body, headers=form_headers(ct), data_format='raw')
    assert r.status == 400 and why in r.doc['error']


def test_the_number_of_parts_is_bounded():
    ok, ct = multipart([(['Content-Disposition: form-data; name="f"'], b'x')]
                       * MAX_FORM_PARTS)
    assert len(parse_form(ct, ok)[0].getlist('f')) == MAX_FORM_PARTS
    over, ct = multipart([(['Content-Disposition: form-data; name="f"'], b'x')]
                         * (MAX_FORM_PARTS + 1))
    with pytest.raises(BadRequest, match='more than 1000 parts'):
        parse_form(ct, over)
    fields = '&'.join(['f=1'] * (MAX_FORM_PARTS + 1)).encode()
    with pytest.raises(BadRequest, match='more than 1000 fields'):
        parse_form('application/x-www-form-urlencoded', fields)


def test_uploaded_file_repr_and_read():
    f = UploadedFile('doc', 'a.txt', 'text/plain', b'hi')
    assert f.read() == b'hi' and f.size == 2
    assert repr(f) == "<UploadedFile doc 'a.txt' text/plain, 2 bytes>"


# -- the response's Content-Type header ------------------------------------------------------


def test_response_content_type_header_sets_the_content_type():
    class Csv(Service):
        def handle(self):
            self.response.payload = 'a,b\n1,2\n'
            self.response.headers['Content-Type'] = 'text/csv'
            self.response.headers['X-Other'] = 'kept'

    r = call(Csv)
    assert r.content_type == 'text/csv'
    assert r.headers == [['x-other', 'kept']]
    assert r.body == b'a,b\n1,2\n'

    class Both(Service):
        def handle(self):
            self.response.payload = {'a': 1}
            self.response.headers['content-type'] = 'text/csv'
            self.response.content_type = 'application/vnd.api+json'

    r = call(Both)
    assert r.content_type == 'application/vnd.api+json' and not r.headers


# -- 405 --------------------------------------------------------------------------------------


def test_bare_method_not_allowed_lists_the_verb_handlers():
    class Verbs(Service):
        def handle_GET(self):
            raise MethodNotAllowed()

        def handle_PUT(self):
            pass

    # The refused method is not among the allowed, though it has a handler.
    r = call(Verbs, method='GET', path='/v/1')
    assert r.status == 405
    assert r.doc == {'error': 'method GET not allowed for /v/1; allowed: PUT',
                     'allowed': ['PUT'], 'cid': 'c1d'}
    assert r.headers == [['allow', 'PUT']]

    class Only(Service):
        def handle_GET(self):
            raise MethodNotAllowed()

    # Nothing left to allow: no allow header, no allowed.
    r = call(Only, method='GET', path='/o')
    assert r.doc == {'error': 'method GET not allowed for /o', 'cid': 'c1d'}
    assert not r.headers


def test_bare_method_not_allowed_of_a_plain_handle_leaves_allow_to_the_server():
    class Plain(Service):
        def handle(self):
            raise MethodNotAllowed()

    r = call(Plain, method='PATCH', path='/p/2')
    assert r.doc == {'error': 'method PATCH not allowed for /p/2', 'cid': 'c1d'}
    assert not r.headers

    class Own(Service):
        def handle(self):
            raise MethodNotAllowed('read only', allowed=['GET'])

    r = call(Own)
    assert r.doc == {'error': 'read only', 'allowed': ['GET'], 'cid': 'c1d'}
    assert r.headers == [['allow', 'GET']]

    class OwnWithIt(Service):
        def handle(self):
            raise MethodNotAllowed('read only', allowed=['GET', 'POST'])

    r = call(OwnWithIt, method='POST')
    assert r.doc == {'error': 'read only', 'allowed': ['GET'], 'cid': 'c1d'}
    assert r.headers == [['allow', 'GET']]


def test_boundary_text_not_on_a_delimiter_line_is_data():
    # CRLF --boundary followed by other text is not a delimiter (RFC 2046's grammar).
    data = b'a\r\n--XyZ-123x\r\nb\r\n--XyZ-123 tail'
    body, ct = multipart([(['Content-Disposition: form-data; name="f"; filename="f"'], data)])
    assert parse_form(ct, body)[1]['f'].data == data


def test_mangled_multipart_bodies_parse_or_are_a_400():
    # Untrusted bytes: whatever is cut, flipped or inserted, the parser answers with the
    # form or with a BadRequest, never another exception (a 500). A fixed seed: the same
    # bodies on every run.
    import random
    rnd = random.Random(25)
    good, ct = multipart([
        (['Content-Disposition: form-data; name="a"'], b'1'),
        (['Content-Disposition: form-data; name="f"; filename="x.bin"',
          'Content-Type: application/octet-stream'], bytes(range(40))),
        (["Content-Disposition: form-data; name=\"g\"; filename*=UTF-8''%E2%82%AC"], b'e'),
    ])
    pieces = [b'\r\n', b'--', b'--XyZ-123', b'"', b';', b':', b'=', b'\\', b'\xff', b'%']
    outcomes = set()
    for _ in range(3000):
        body = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(len(body) + 1)
            op = rnd.randrange(3)
            if op == 0:
                del body[i:i + rnd.randint(1, 8)]
            elif op == 1:
                body[i:i] = rnd.choice(pieces)
            elif body:
                body[i % len(body)] = rnd.randrange(256)
        try:
            parse_form(ct, bytes(body))
            outcomes.add('ok')
        except BadRequest:
            outcomes.add('400')
    assert outcomes == {'ok', '400'}


# -- the review's quirks -----------------------------------------------------------------------


def one_part(disposition, data=b'x', boundary='B', preamble=b''):
    return preamble + (b'--' + boundary.encode() + b'\r\nContent-Disposition: ' + disposition
                       + b'\r\n\r\n' + data + b'\r\n--' + boundary.encode() + b'--')


def test_part_parameters_as_browsers_send_them():
    ct = 'multipart/form-data; boundary=B'
    # A backslash is no escape (but before " or another backslash); %22, %0D, %0A are.
    _, files = parse_form(ct, one_part(b'form-data; name="f"; filename="C:\\dir\\a.txt"'))
    assert files['f'].filename == 'C:\\dir\\a.txt'
    _, files = parse_form(ct, one_part(b'form-data; name="f"; filename="a %22q%22%0A.txt"'))
    assert files['f'].filename == 'a "q"\n.txt'
    # A filename* that is not charset'lang'text leaves the plain filename.
    _, files = parse_form(ct, one_part(b'form-data; name="f"; filename="good.txt"; '
                                       b'filename*=abc'))
    assert files['f'].filename == 'good.txt'
    # A parameter without a value is skipped.
    fields, _ = parse_form(ct, one_part(b'form-data; foo; name="a"'))
    assert fields == {'a': 'x'}


def test_a_longer_line_starting_with_the_delimiter_is_preamble():
    body = one_part(b'form-data; name="a"', preamble=b'--BX\r\nnot a part\r\n')
    fields, _ = parse_form('multipart/form-data; boundary=B', body)
    assert fields.items_all() == [('a', 'x')]


def test_multidict_getlist_follows_assignment():
    q = parse_query('a=1&a=2&b=3')
    assert q.getlist('a') == ['1', '2']
    q['a'] = 'x'
    q.c = 'new'
    del q['b']
    assert q['a'] == 'x' and q.getlist('a') == ['x']
    assert q.getlist('b') == [] and q.getlist('c') == ['new']
    assert q.items_all() == [('a', 'x'), ('c', 'new')]


def test_field_limit_counts_fields_not_ampersands():
    parse_query('&'.join(['a=1'] * 1000) + '&')
    fields = parse_form('application/x-www-form-urlencoded',
                        b'&'.join([b'a=1'] * 1000) + b'&&&')[0]
    assert len(fields.getlist('a')) == 1000
    with pytest.raises(BadRequest, match='more than 1000 fields'):
        parse_form('application/x-www-form-urlencoded', b'&'.join([b'a=1'] * 1001))


def test_an_undecodable_escape_reads_alike_in_the_query_and_a_form():
    assert parse_query('a=%E9')['a'] == '\ufffd'
    assert parse_form('application/x-www-form-urlencoded', b'a=%E9')[0]['a'] == '\ufffd'


def test_two_content_types_the_last_one_for_payload_and_form():
    body, ct = multipart([(['Content-Disposition: form-data; name="a"; filename="f"'], b'1')])
    headers = [['content-type', 'text/plain'], ['content-type', ct]]
    for data_format in ('json', 'raw'):
        r = call(Form, body=body, headers=headers, data_format=data_format)
        assert r.status == 200, r.doc
        assert r.doc['files'] == [['a', 'f', 'application/octet-stream', '1', 1]], data_format

