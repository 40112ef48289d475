#!/usr/bin/python3
"""Helper for deploy/lab/lab: the parts that are easier with Samba's Python bindings.

Run with Debian's /usr/bin/python3 (python3-samba lives there). Subcommands:

  genpw                         print a random password that satisfies AD complexity
  setup-domain ...              OUs, ADI root group, least-privilege service account and its ACEs
  grant-deleted-objects ...     service account may read CN=Deleted Objects (DirSync tombstones)
  add-replica-dns ...           A record + _msdcs CNAME for a joined replica (the join adds none on 127/8)
  seed-ldif ...                 write the LDIF for `lab seed`

All network operations use NTLM (no Kerberos) over signed/sealed LDAP or RPC as Administrator,
so they work with `ldap server require strong auth = yes`.
"""
import argparse
import os
import re
import secrets
import string
import sys


def die(msg):
    print("labctl: error: %s" % msg, file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------------------------
# passwords


def genpw(length=20):
    alphabet = string.ascii_letters + string.digits
    while True:
        body = "".join(secrets.choice(alphabet) for _ in range(length))
        # "Lab" + digit + "-" guarantees upper, lower, digit and a non-alphanumeric character.
        pw = "Lab%d-%s" % (secrets.randbelow(10), body)
        low = pw.lower()
        if any(t in low for t in ("admin", "svc", "forestsync", "service")):
            continue
        return pw


# --------------------------------------------------------------------------------------------
# Samba connection helpers


def read_secret(path):
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\n")


def connect(smbconf, url, netbios, password):
    from samba.param import LoadParm
    from samba.credentials import Credentials, DONT_USE_KERBEROS
    from samba.auth import system_session
    from samba.samdb import SamDB

    lp = LoadParm()
    lp.load(smbconf)
    creds = Credentials()
    creds.guess(lp)
    creds.set_username("Administrator")
    creds.set_domain(netbios)
    creds.set_password(password)
    creds.set_kerberos_state(DONT_USE_KERBEROS)
    samdb = SamDB(url=url, session_info=system_session(), credentials=creds, lp=lp)
    return samdb, lp, creds


def exists(samdb, dn):
    import ldb
    try:
        res = samdb.search(base=dn, scope=ldb.SCOPE_BASE, attrs=["distinguishedName"])
        return len(res) == 1
    except ldb.LdbError as e:
        if e.args[0] == ldb.ERR_NO_SUCH_OBJECT:
            return False
        raise


def add_if_missing(samdb, msg):
    if exists(samdb, msg["dn"]):
        return False
    samdb.add(msg)
    return True


def utf16_pw(pw):
    return ('"%s"' % pw).encode("utf-16-le")


def add_aces(samdb, dn, aces, controls=()):
    """Add explicit ACEs to an object's DACL (what `samba-tool dsacl set` does), idempotently.

    New allow ACEs go after any explicit deny ACEs and before the other explicit ACEs; inherited
    ACEs are dropped from what we write (the server recomputes them). `controls` are added to
    the read and the write (e.g. "show_deleted:1" for CN=Deleted Objects).
    """
    import ldb
    from samba.dcerpc import security
    from samba.ndr import ndr_pack, ndr_unpack

    domain_sid = security.dom_sid(samdb.get_domain_sid())
    res = samdb.search(base=dn, scope=ldb.SCOPE_BASE, attrs=["nTSecurityDescriptor"],
                       controls=["sd_flags:1:4"] + list(controls))
    desc = ndr_unpack(security.descriptor, res[0]["nTSecurityDescriptor"][0])
    sddl = desc.as_sddl(domain_sid)
    head = sddl[:sddl.index("(")] if "(" in sddl else sddl
    current = re.findall(r"\([^)]*\)", sddl)
    explicit = [a for a in current if "ID" not in a.split(";")[1]]
    changed = False
    for ace in aces:
        # normalise the ACE through Samba's parser so the comparison matches its output
        norm = re.findall(r"\([^)]*\)",
                          security.descriptor.from_sddl("D:" + ace, domain_sid).as_sddl(domain_sid))
        for a in norm:
            if a in explicit:
                continue
            pos = 0
            for i, e in enumerate(explicit):
                if e[1:].startswith("D;") or e[1:].startswith("OD;"):
                    pos = i + 1
            explicit.insert(pos, a)
            changed = True
    if not changed:
        return False
    new = security.descriptor.from_sddl(head + "".join(explicit), domain_sid)
    m = ldb.Message()
    m.dn = ldb.Dn(samdb, dn)
    m["nTSecurityDescriptor"] = ldb.MessageElement(ndr_pack(new), ldb.FLAG_MOD_REPLACE,
                                                   "nTSecurityDescriptor")
    samdb.modify(m, controls=["sd_flags:1:4"] + list(controls))
    return True


# Well-known schema / extended-right GUIDs
GUID_DS_REPL_GET_CHANGES = "1131f6aa-9c07-11d1-f79f-00c04fc2dcd2"   # Replicating Directory Changes
GUID_RESET_PASSWORD = "00299570-246d-11d0-a768-00aa006e0529"        # User-Force-Change-Password
GUID_ATTR_UAC = "bf967a68-0de6-11d0-a285-00aa003049e2"              # userAccountControl
GUID_CLASS_USER = "bf967aba-0de6-11d0-a285-00aa003049e2"            # class user
GUID_CLASS_GROUP = "bf967a9c-0de6-11d0-a285-00aa003049e2"           # class group


def domain_root_aces(sid):
    return [
        # DirSync
        "(OA;;CR;%s;;%s)" % (GUID_DS_REPL_GET_CHANGES, sid),
        # Reset Password, inherited to user objects
        "(OA;CI;CR;%s;%s;%s)" % (GUID_RESET_PASSWORD, GUID_CLASS_USER, sid),
        # Write userAccountControl, inherited to user objects
        "(OA;CI;WP;%s;%s;%s)" % (GUID_ATTR_UAC, GUID_CLASS_USER, sid),
    ]


def managed_ou_aces(sid):
    return [
        # create/delete user and group objects in this OU and in OUs below it
        "(OA;CI;CCDC;%s;;%s)" % (GUID_CLASS_USER, sid),
        "(OA;CI;CCDC;%s;;%s)" % (GUID_CLASS_GROUP, sid),
        # write all properties of user and group objects below this OU
        "(OA;CIIO;WP;;%s;%s)" % (GUID_CLASS_USER, sid),
        "(OA;CIIO;WP;;%s;%s)" % (GUID_CLASS_GROUP, sid),
    ]


def protect_admin_users(samdb, sid):
    """Emulate Windows' SDProp/AdminSDHolder for the protected user accounts (adminCount=1:
    Administrator, krbtgt): Samba has no SDProp, so the domain-wide Reset Password / write
    userAccountControl ACEs granted to the service account would otherwise reach them.
    Inheritance is blocked (DACL protected) and the remaining inherited ACEs become explicit,
    minus the service account's. Idempotent."""
    import ldb
    from samba.dcerpc import security
    from samba.ndr import ndr_pack, ndr_unpack

    domain_sid = security.dom_sid(samdb.get_domain_sid())
    res = samdb.search(base=str(samdb.domain_dn()), scope=ldb.SCOPE_SUBTREE,
                       expression="(&(objectClass=user)(adminCount=1))",
                       attrs=["nTSecurityDescriptor"], controls=["sd_flags:1:4"])
    for r in res:
        desc = ndr_unpack(security.descriptor, r["nTSecurityDescriptor"][0])
        sddl = desc.as_sddl(domain_sid)
        head = sddl[:sddl.index("(")] if "(" in sddl else sddl
        if head.startswith("D:P"):
            continue
        aces = []
        for ace in re.findall(r"\([^)]*\)", sddl):
            if ace.rstrip(")").endswith(";" + sid):
                continue
            parts = ace[1:-1].split(";")
            parts[1] = parts[1].replace("ID", "")
            a = "(" + ";".join(parts) + ")"
            if a not in aces:
                aces.append(a)
        new = security.descriptor.from_sddl("D:P" + head[2:].replace("P", "") + "".join(aces),
                                            domain_sid)
        m = ldb.Message()
        m.dn = r.dn
        m["nTSecurityDescriptor"] = ldb.MessageElement(ndr_pack(new), ldb.FLAG_MOD_REPLACE,
                                                       "nTSecurityDescriptor")
        samdb.modify(m, controls=["sd_flags:1:4"])


def cmd_setup_domain(a):
    samdb, _, _ = connect(a.smbconf, a.url, a.netbios, read_secret(a.admin_pw_file))
    base = str(samdb.domain_dn())
    dns = a.dns_domain
    adi = "OU=ADI," + base
    root_group = "CN=JumpCloud," + adi
    target = "OU=ForestSync," + base
    svc_dn = "CN=%s,CN=Users,%s" % (a.svc_name, base)

    add_if_missing(samdb, {"dn": adi, "objectClass": "organizationalUnit",
                           "description": "JumpCloud AD Import (ADI) scope"})
    add_if_missing(samdb, {"dn": root_group, "objectClass": "group",
                           "sAMAccountName": "JumpCloud",
                           "groupType": str(-2147483646),   # global security group
                           "description": "ADI root group: members are imported"})
    add_if_missing(samdb, {"dn": target, "objectClass": "organizationalUnit",
                           "description": "forestsync target OU (JumpCloud-authoritative mode)"})
    add_if_missing(samdb, {"dn": svc_dn, "objectClass": "user",
                           "sAMAccountName": a.svc_name,
                           "userPrincipalName": "%s@%s" % (a.svc_name, dns),
                           "displayName": "ForestSync Agent",
                           "description": "forestsync least-privilege service account (lab)",
                           "unicodePwd": utf16_pw(read_secret(a.svc_pw_file)),
                           # NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD
                           "userAccountControl": "66048"})
    import ldb
    res = samdb.search(base=svc_dn, scope=ldb.SCOPE_BASE, attrs=["objectSid"])
    from samba.ndr import ndr_unpack
    from samba.dcerpc import security
    sid = str(ndr_unpack(security.dom_sid, res[0]["objectSid"][0]))

    add_aces(samdb, base, domain_root_aces(sid))
    for ou in (adi, target):
        add_aces(samdb, ou, managed_ou_aces(sid))
    protect_admin_users(samdb, sid)
    print(sid)


def deleted_objects_aces(sid):
    return [
        # List Contents + Read Property + Read Control on CN=Deleted Objects: what Windows admins grant
        # with `dsacls "CN=Deleted Objects,<base>" /G <DOMAIN>\<svc>:LCRP` for a non-admin DirSync
        # account. Samba's DirSync (unlike Windows) still checks this container for a caller that only
        # holds Replicating Directory Changes, and returns no tombstones without it.
        # Container-inherit: a deletion that *replicates in* gets a tombstone whose security
        # descriptor is computed from this container's inheritable ACEs alone; without CI the
        # service account cannot read those tombstones and DirSync never reports such a deletion
        # (a user deleted on DC2 is never seen by an agent reading DC1).
        "(A;CI;LCRPRC;;;%s)" % sid,
    ]


def cmd_grant_deleted_objects(a):
    """Grant the service account read access to CN=Deleted Objects,<base>.

    Writes the DC's sam.ldb directly as system: over LDAP not even Administrator may read or write
    that container's security descriptor on Samba. Idempotent; the change replicates like any
    other (run it on every DC anyway: an already present ACE is left alone)."""
    import ldb
    from samba.param import LoadParm
    from samba.auth import system_session
    from samba.samdb import SamDB
    from samba.dcerpc import security
    from samba.ndr import ndr_unpack

    lp = LoadParm()
    lp.load(a.dc_smbconf)
    samdb = SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)
    base = str(samdb.domain_dn())
    res = samdb.search(base="CN=Users," + base, scope=ldb.SCOPE_ONELEVEL,
                       expression="(sAMAccountName=%s)" % ldb.binary_encode(a.svc_name),
                       attrs=["objectSid"])
    if len(res) != 1:
        die("no account %s under CN=Users,%s" % (a.svc_name, base))
    sid = str(ndr_unpack(security.dom_sid, res[0]["objectSid"][0]))
    dn = "CN=Deleted Objects," + base
    changed = add_aces(samdb, dn, deleted_objects_aces(sid), controls=["show_deleted:1"])
    print("%s: %s" % (dn, "granted" if changed else "already granted"))


def cmd_show_aces(a):
    """Print the SDDL of the given objects (debug aid)."""
    import ldb
    from samba.dcerpc import security
    from samba.ndr import ndr_unpack
    samdb, _, _ = connect(a.smbconf, a.url, a.netbios, read_secret(a.admin_pw_file))
    domain_sid = security.dom_sid(samdb.get_domain_sid())
    for dn in a.dn:
        res = samdb.search(base=dn, scope=ldb.SCOPE_BASE, attrs=["nTSecurityDescriptor"],
                           controls=["sd_flags:1:4"])
        desc = ndr_unpack(security.descriptor, res[0]["nTSecurityDescriptor"][0])
        print("%s\n  %s" % (dn, desc.as_sddl(domain_sid)))


# --------------------------------------------------------------------------------------------
# DNS records for a replica


def cmd_add_replica_dns(a):
    import ldb
    from samba.dcerpc import dnsserver
    from samba.dnsserver import record_from_string
    from samba.netcmd.dns import dns_type_flag
    import samba
    from samba import werror

    samdb, lp, creds = connect(a.smbconf, "ldap://%s" % a.server, a.netbios,
                               read_secret(a.admin_pw_file))
    config = str(samdb.get_config_basedn())
    res = samdb.search(base=config, scope=ldb.SCOPE_SUBTREE,
                       expression="(&(objectClass=nTDSDSA)(!(isDeleted=TRUE)))",
                       attrs=["objectGUID"])
    guid = None
    from samba.ndr import ndr_unpack
    from samba.dcerpc import misc
    want = "CN=NTDS Settings,CN=%s,CN=Servers," % a.name
    for r in res:
        if str(r.dn).upper().startswith(want.upper()):
            guid = str(ndr_unpack(misc.GUID, r["objectGUID"][0]))
    if guid is None:
        die("no NTDS Settings object for %s on %s" % (a.name, a.server))

    conn = dnsserver.dnsserver("ncacn_ip_tcp:%s[sign]" % a.server, lp, creds)
    fqdn = "%s.%s" % (a.name, a.zone)
    for zone, name, rtype, data in ((a.zone, a.name, "A", a.ip),
                                    ("_msdcs." + a.zone, guid, "CNAME", fqdn)):
        buf = dnsserver.DNS_RPC_RECORD_BUF()
        buf.rec = record_from_string(dns_type_flag(rtype), data)
        try:
            conn.DnssrvUpdateRecord2(dnsserver.DNS_CLIENT_VERSION_LONGHORN, 0, a.server,
                                     zone, name, buf, None)
        except samba.WERRORError as e:
            if e.args[0] != werror.WERR_DNS_ERROR_RECORD_ALREADY_EXISTS:
                raise
    print(guid)


# --------------------------------------------------------------------------------------------
# seed fixtures


def ldif_escape_rdn(v):
    return re.sub(r'([,+"\\<>;=#])', r"\\\1", v)


def cmd_seed_ldif(a):
    prefix = a.prefix
    base = a.base
    ou = "OU=Seed-%s,OU=ADI,%s" % (prefix, base)
    root = "CN=JumpCloud,OU=ADI,%s" % base
    n, m = a.users, a.groups
    out = []
    w = out.append
    w("dn: %s\nobjectClass: organizationalUnit\ndescription: lab seed %s (%d users, %d groups)\n"
      % (ou, prefix, n, m))
    udn = []
    for i in range(1, n + 1):
        sam = "%s-u%05d" % (prefix, i)
        dn = "CN=%s,%s" % (sam, ou)
        udn.append(dn)
        given = "First%05d" % i
        sn = "Last%s" % prefix.capitalize()
        w("dn: %s\nobjectClass: user\nsAMAccountName: %s\ngivenName: %s\nsn: %s\n"
          "displayName: %s %s\nmail: %s@%s\nuserPrincipalName: %s@%s\n"
          "userAccountControl: %d\n" % (dn, sam, given, sn, given, sn, sam, a.dns_domain,
                                        sam, a.dns_domain, a.uac))
    # group levels: top groups are members of the root group, mid groups of a top group,
    # leaf groups of a mid group (so users reach the root group through up to 3 nested groups)
    gdn = ["CN=%s-g%03d,%s" % (prefix, i, ou) for i in range(1, m + 1)]
    n_top = max(1, m // 5) if m else 0
    n_mid = (m - n_top) // 2
    top = list(range(0, n_top))
    mid = list(range(n_top, n_top + n_mid))
    leaf = list(range(n_top + n_mid, m))
    members = {g: [] for g in range(m)}
    direct = []
    for j, dn in enumerate(udn):
        if m == 0 or j % 10 == 0:
            direct.append(dn)          # every 10th user is a direct member of the root group
        else:
            members[j % m].append(dn)
    for k, g in enumerate(mid):
        members[top[k % len(top)]].append(gdn[g])
    for k, g in enumerate(leaf):
        parent = mid[k % len(mid)] if mid else top[k % len(top)]
        members[parent].append(gdn[g])
    for g in leaf + mid + top:         # children before parents
        name = "%s-g%03d" % (prefix, g + 1)
        level = "top" if g in top else ("mid" if g in mid else "leaf")
        w("dn: %s\nobjectClass: group\nsAMAccountName: %s\ngroupType: -2147483646\n"
          "description: lab seed %s group (%s)\n" % (gdn[g], name, prefix, level)
          + "".join("member: %s\n" % x for x in members[g]))
    root_members = [gdn[g] for g in top] + direct
    if root_members:
        w("dn: %s\nchangetype: modify\nadd: member\n" % root
          + "".join("member: %s\n" % x for x in root_members) + "-\n")
    sys.stdout.write("\n".join(out))


# --------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(prog="labctl.py")
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("genpw")

    def conn_args(sp):
        sp.add_argument("--smbconf", required=True)
        sp.add_argument("--netbios", required=True)
        sp.add_argument("--admin-pw-file", required=True)

    s = sub.add_parser("setup-domain")
    conn_args(s)
    s.add_argument("--url", required=True)
    s.add_argument("--dns-domain", required=True)
    s.add_argument("--svc-name", default="svc-forestsync")
    s.add_argument("--svc-pw-file", required=True)

    s = sub.add_parser("grant-deleted-objects")
    s.add_argument("--dc-smbconf", required=True, help="the DC's own smb.conf (opens its sam.ldb)")
    s.add_argument("--svc-name", default="svc-forestsync")

    s = sub.add_parser("show-aces")
    conn_args(s)
    s.add_argument("--url", required=True)
    s.add_argument("dn", nargs="+")

    s = sub.add_parser("add-replica-dns")
    conn_args(s)
    s.add_argument("--server", required=True)
    s.add_argument("--zone", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--ip", required=True)

    s = sub.add_parser("seed-ldif")
    s.add_argument("--base", required=True)
    s.add_argument("--dns-domain", required=True)
    s.add_argument("--prefix", required=True)
    s.add_argument("--users", type=int, required=True)
    s.add_argument("--groups", type=int, required=True)
    s.add_argument("--uac", type=int, default=544)

    a = p.parse_args()
    if a.cmd == "genpw":
        print(genpw())
    elif a.cmd == "setup-domain":
        cmd_setup_domain(a)
    elif a.cmd == "grant-deleted-objects":
        cmd_grant_deleted_objects(a)
    elif a.cmd == "show-aces":
        cmd_show_aces(a)
    elif a.cmd == "add-replica-dns":
        cmd_add_replica_dns(a)
    elif a.cmd == "seed-ldif":
        cmd_seed_ldif(a)


if __name__ == "__main__":
    main()
