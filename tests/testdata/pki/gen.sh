#!/usr/bin/env bash
# Regenerates the test PKI used by the TLS end-to-end tests. The PEMs are committed (valid for
# 100 years) so tests need no openssl; rerun this only to change them.
#
#   ca            root CA (EC P-256)
#   int           intermediate CA under ca
#   leaf-ec       server cert under int, SEC1 EC key;   chain-ec.pem = leaf + int
#   leaf-rsa      server cert under ca,  PKCS#1 RSA key
#   leaf-pkcs8    server cert under ca,  PKCS#8 EC key (the rotation target)
#   client        client cert under ca
#   other-ca, other-client   a CA the host does not trust, and a client cert under it
#   only-cert.pem, only-key.pem   a PEM with no key, and one with no certificate
set -euo pipefail
cd "$(dirname "$0")"
days=36500
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ec_sec1() { openssl ecparam -genkey -name prime256v1 -noout -out "$1"; }

ca() { # name subject [issuer]
  ec_sec1 "$1.key"
  printf 'basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n' > "$tmp/$1.ext"
  if [ $# -eq 2 ]; then
    openssl req -new -x509 -key "$1.key" -subj "/CN=$2" -days $days -sha256 \
      -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign \
      -out "$1.pem"
  else
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$tmp/$1.csr"
    openssl x509 -req -in "$tmp/$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial \
      -days $days -sha256 -extfile "$tmp/$1.ext" -out "$1.pem"
  fi
}

leaf() { # name cn issuer usage
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$tmp/$1.csr"
  {
    echo "basicConstraints=critical,CA:false"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$4"
    [ "$4" = serverAuth ] && echo "subjectAltName=DNS:localhost,IP:127.0.0.1"
  } > "$tmp/$1.ext"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial \
    -days $days -sha256 -extfile "$tmp/$1.ext" -out "$1.pem"
}

ca ca "Effe Test Root CA"
ca int "Effe Test Intermediate CA" ca
ca other-ca "Effe Untrusted CA"

ec_sec1 leaf-ec.key
leaf leaf-ec effe-test-ec int serverAuth
cat leaf-ec.pem int.pem > chain-ec.pem

openssl genrsa -traditional -out leaf-rsa.key 2048
leaf leaf-rsa effe-test-rsa ca serverAuth

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out leaf-pkcs8.key
leaf leaf-pkcs8 effe-test-pkcs8 ca serverAuth

ec_sec1 client.key
leaf client effe-test-client ca clientAuth
ec_sec1 other-client.key
leaf other-client effe-test-other-client other-ca clientAuth

cp leaf-ec.pem only-cert.pem
cp leaf-ec.key only-key.pem
rm -f ./*.srl
