/*
 * Debian bookworm's libcivetweb1 (1.15), the HTTP server inside Orthanc, loads OpenSSL with
 * dlopen("libssl.so") and looks up SSL_get_peer_certificate, which OpenSSL 3 no longer exports
 * (it became a macro for SSL_get1_peer_certificate, same semantics: a new reference). The lookup
 * yields NULL and the first HTTPS request crashes the worker (segfault at address 0).
 *
 * The dev stack builds this into a "libssl.so" that links the real libssl.so.3 and adds the old
 * name back, and puts it first on Orthanc's LD_LIBRARY_PATH; every other symbol resolves to the
 * real library through this one's dependencies. Dev stack only; never shipped.
 */
typedef struct ssl_st SSL;
typedef struct x509_st X509;

X509 *SSL_get1_peer_certificate(const SSL *ssl);

X509 *SSL_get_peer_certificate(const SSL *ssl) { return SSL_get1_peer_certificate(ssl); }
