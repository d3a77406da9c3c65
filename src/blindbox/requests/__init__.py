"""``import blindbox.requests as requests``: the requests API, sending only to attested enclaves.

:class:`SecureSession` replaces ``requests.Session`` and the module-level
``request/get/head/options/post/put/patch/delete`` take the same arguments as
requests' plus what to accept: ``measurements=`` or ``manifest=`` (with
``manifest_signature=``/``publisher_key=``), ``expected_policy=``, ``roots=``,
``nonce=`` and AttestationPolicy fields.
Everything a script uses from requests that does not send data (exceptions,
``codes``, ``Response``, ``Request``, ``PreparedRequest``, ``auth``...) is
re-exported; nothing that could send to an unattested server is (there is no
plain ``Session`` here).
"""

from requests import auth, cookies, exceptions, models, status_codes, structures, utils
from requests.exceptions import (
    ConnectionError,
    ConnectTimeout,
    FileModeWarning,
    HTTPError,
    JSONDecodeError,
    ReadTimeout,
    RequestException,
    Timeout,
    TooManyRedirects,
    URLRequired,
)
from requests.models import PreparedRequest, Request, Response
from requests.status_codes import codes

from blindbox.attest.policy import AttestationPolicy, Rule
from blindbox.attest.verifier import Attestation
from blindbox.errors import (
    AttestationError,
    BindingMismatchError,
    ConfigurationError,
    InsecureGuestPolicyError,
    InvalidEnclaveCode,
    NotAnEnclaveError,
    OriginRefusedError,
    PolicyMismatchError,
    PolicyViolationError,
)
from blindbox.requests.api import delete, get, head, options, patch, post, put, request
from blindbox.requests.session import SecureSession

__all__ = [
    "Attestation",
    "AttestationError",
    "AttestationPolicy",
    "BindingMismatchError",
    "ConfigurationError",
    "ConnectTimeout",
    "ConnectionError",
    "FileModeWarning",
    "HTTPError",
    "InsecureGuestPolicyError",
    "InvalidEnclaveCode",
    "JSONDecodeError",
    "NotAnEnclaveError",
    "OriginRefusedError",
    "PolicyMismatchError",
    "PolicyViolationError",
    "PreparedRequest",
    "ReadTimeout",
    "Request",
    "RequestException",
    "Response",
    "Rule",
    "SecureSession",
    "Timeout",
    "TooManyRedirects",
    "URLRequired",
    "auth",
    "codes",
    "cookies",
    "delete",
    "exceptions",
    "get",
    "head",
    "models",
    "options",
    "patch",
    "post",
    "put",
    "request",
    "status_codes",
    "structures",
    "utils",
]
