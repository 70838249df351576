"""Discovery: walk a server's address space and list its variables (``valvoja opcua browse``).

From a start node (default the Objects folder) the walk follows hierarchical references forward
(not HasProperty: properties such as EURange are read as attributes of their variable, not listed),
breadth first, up to ``max_depth`` levels and ``max_nodes`` nodes, skipping the standard Server object
unless asked. Every request carries many nodes (``per_call``), so a large server is walked in few
round trips. For each variable it reads data type, value rank, access level and the
EngineeringUnits and EURange properties.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from asyncua import Client, ua

_HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)
_SERVER = ua.NodeId(ua.ObjectIds.Server)

_INT_TYPES = {"SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"}
_FLOAT_TYPES = {"Float", "Double", "Decimal"}
_TEXT_TYPES = {"String", "LocalizedText", "DateTime", "ByteString", "Guid", "NodeId", "QualifiedName"}
# Where a subtype's kind comes from: an Enumeration's values travel as Int32, the abstract Number / Integer /
# UInteger as one of their concrete types. Structure and BaseDataType end the walk up the type tree.
_BASE_TYPES = _INT_TYPES | _FLOAT_TYPES | _TEXT_TYPES | {"Boolean", "Enumeration", "Integer", "UInteger", "Number",
                                                         "Structure", "BaseDataType"}
_HAS_SUBTYPE = ua.NodeId(ua.ObjectIds.HasSubtype)


@dataclass(slots=True)
class Variable:
    node_id: str
    path: list[str]  # browse names from the start node (Objects: excluded) down to this variable
    data_type: str = "?"
    value_rank: int = -1
    access: list[str] = field(default_factory=list)
    unit: str = ""
    eu_range: tuple[float, float] | None = None
    description: str = ""
    # The built-in type data_type derives from (Duration: Double, a server's enumeration: Enumeration), "" when
    # data_type is built in: it decides the kind.
    base_type: str = ""
    namespace_uri: str | None = None  # of the node's namespace index, from the server's NamespaceArray

    @property
    def config_id(self) -> str:
        """The node id for a configuration: by namespace URI (``nsu=``) where the index is the server's own numbering
        (1 and up), which another start of the server may change (collectors/opcua/README.md, Node ids); ``ns=`` as
        browsed where the URI is unknown or holds a ``;`` (a node id's separator)."""
        nid = ua.NodeId.from_string(self.node_id)
        if not nid.NamespaceIndex or not self.namespace_uri or ";" in self.namespace_uri:
            return self.node_id
        return f"nsu={self.namespace_uri};" + ua.NodeId(nid.Identifier, 0, nid.NodeIdType).to_string()

    @property
    def tag(self) -> str:
        """A tag name: the path joined by dots, characters a tag name cannot have replaced."""
        return ".".join(re.sub(r"\s+", "_", p) for p in self.path)

    @property
    def is_array(self) -> bool:
        return self.value_rank >= 0 or self.value_rank == -3  # OneOrMoreDimensions / ScalarOrOneDimension

    @property
    def kind(self) -> str:
        t = self.base_type or self.data_type
        if t == "Boolean":
            return "bool"
        if t in _INT_TYPES or t in ("Enumeration", "Integer", "UInteger"):
            return "int"
        if t in _FLOAT_TYPES or t == "Number":
            return "float"
        return "string"

    @property
    def type_text(self) -> str:
        return self.data_type + ("[]" if self.is_array else "")


def _access(mask: int) -> list[str]:
    names = [("read", ua.AccessLevel.CurrentRead), ("write", ua.AccessLevel.CurrentWrite),
             ("history", ua.AccessLevel.HistoryRead)]
    return [n for n, bit in names if mask & bit.mask]


def _type_name(nodeid: ua.NodeId, names: dict[ua.NodeId, str]) -> str:
    if nodeid.NamespaceIndex == 0 and isinstance(nodeid.Identifier, int):
        return ua.ObjectIdNames.get(nodeid.Identifier, nodeid.to_string())
    return names.get(nodeid, nodeid.to_string())


async def _browse(client: Client, nodes: list[ua.NodeId], per_call: int, *,
                  direction: ua.BrowseDirection = ua.BrowseDirection.Forward,
                  reference: ua.NodeId = ua.NodeId(ua.ObjectIds.HierarchicalReferences),
                  classes: int = int(ua.NodeClass.Object) | int(ua.NodeClass.Variable),
                  ) -> list[list[ua.ReferenceDescription]]:
    out: list[list[ua.ReferenceDescription]] = []
    for start in range(0, len(nodes), per_call):
        params = ua.BrowseParameters()
        params.View = ua.ViewDescription()
        params.RequestedMaxReferencesPerNode = 0
        for nid in nodes[start:start + per_call]:
            d = ua.BrowseDescription()
            d.NodeId = nid
            d.BrowseDirection = direction
            d.ReferenceTypeId = reference
            d.IncludeSubtypes = True
            d.NodeClassMask = classes
            d.ResultMask = int(ua.BrowseResultMask.All)
            params.NodesToBrowse.append(d)
        for result in await client.uaclient.browse(params):
            refs = list(result.References or [])
            cp = result.ContinuationPoint
            while cp:
                nxt = ua.BrowseNextParameters()
                nxt.ContinuationPoints = [cp]
                more = (await client.uaclient.browse_next(nxt))[0]
                refs.extend(more.References or [])
                cp = more.ContinuationPoint
            out.append(refs)
    return out


async def _read(client: Client, items: list[tuple[ua.NodeId, ua.AttributeIds]], per_call: int) -> list[ua.DataValue]:
    out: list[ua.DataValue] = []
    for start in range(0, len(items), per_call):
        params = ua.ReadParameters()
        for nid, attr in items[start:start + per_call]:
            rv = ua.ReadValueId()
            rv.NodeId = nid
            rv.AttributeId = attr
            params.NodesToRead.append(rv)
        out.extend(await client.uaclient.read(params))
    return out


async def _properties(client: Client, nodes: list[ua.NodeId], name: str, per_call: int) -> list[object]:
    """The value of property ``name`` of each node (None where absent)."""
    values: list[object] = [None] * len(nodes)
    for start in range(0, len(nodes), per_call):
        paths = []
        for nid in nodes[start:start + per_call]:
            el = ua.RelativePathElement()
            el.ReferenceTypeId = _HAS_PROPERTY
            el.IsInverse = False
            el.IncludeSubtypes = True
            el.TargetName = ua.QualifiedName(name, 0)
            bp = ua.BrowsePath()
            bp.StartingNode = nid
            bp.RelativePath = ua.RelativePath(Elements=[el])
            paths.append(bp)
        results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
        found = [(start + i, r.Targets[0].TargetId) for i, r in enumerate(results)
                 if r.StatusCode.is_good() and r.Targets]
        dvs = await _read(client, [(ua.NodeId(t.Identifier, t.NamespaceIndex), ua.AttributeIds.Value)
                                   for _, t in found], per_call)
        for (i, _), dv in zip(found, dvs, strict=True):
            if dv.StatusCode is None or dv.StatusCode.is_good():
                values[i] = dv.Value.Value if dv.Value is not None else None
    return values


async def browse(client: Client, root: str = "i=85", *, max_depth: int = 10, max_nodes: int = 10_000,
                 per_call: int = 200, include_server: bool = False) -> tuple[list[Variable], bool]:
    """Variables below ``root`` and whether the walk stopped at ``max_nodes``. Requests carry ``per_call`` nodes, or
    fewer where the server's operation limits say so (it refuses a bigger request whole)."""
    from collectors.opcua.connection import namespace_array, operation_limits

    limits = await operation_limits(client)
    per_call = min([per_call, *(limits[k] for k in ("browse", "read", "translate") if k in limits)])
    start = ua.NodeId.from_string(root)
    uri = getattr(start, "NamespaceUri", None)
    if uri:  # nsu=: as written no server resolves it (asyncua encodes the URI inside the NodeId field)
        namespaces = await namespace_array(client) or []
        if uri not in namespaces:
            raise LookupError(f"--root {root}: the server has no namespace {uri} (it has {', '.join(namespaces)})")
        start = ua.NodeId(start.Identifier, namespaces.index(uri), start.NodeIdType)
    prefix: list[str] = []
    variables: list[Variable] = []
    if start != ua.NodeId(ua.ObjectIds.ObjectsFolder):  # tags below a folder keep the folder's name
        dv, kind = await _read(client, [(start, ua.AttributeIds.BrowseName), (start, ua.AttributeIds.NodeClass)], 2)
        if dv.StatusCode is not None and not dv.StatusCode.is_good():
            raise LookupError(f"--root {root}: the server has no such node ({dv.StatusCode.name})")
        if dv.Value is not None and isinstance(dv.Value.Value, ua.QualifiedName):
            prefix = [dv.Value.Value.Name]
        if kind.Value is not None and kind.Value.Value == ua.NodeClass.Variable:
            variables.append(Variable(start.to_string(), prefix))  # a root that is a variable is listed too
    level: list[tuple[ua.NodeId, list[str]]] = [(start, prefix)]
    seen = {start}
    truncated = False
    for _depth in range(max_depth):
        if not level:
            break
        children = await _browse(client, [n for n, _ in level], per_call)
        nxt: list[tuple[ua.NodeId, list[str]]] = []
        for (_, path), refs in zip(level, children, strict=True):
            for ref in refs:
                if ref.ReferenceTypeId == _HAS_PROPERTY or not ref.IsForward:
                    continue
                nid = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex)
                if nid in seen or (nid == _SERVER and not include_server):
                    continue
                if len(seen) >= max_nodes:
                    truncated = True
                    break
                seen.add(nid)
                child_path = [*path, ref.BrowseName.Name]
                if ref.NodeClass == ua.NodeClass.Variable:
                    variables.append(Variable(nid.to_string(), child_path))
                nxt.append((nid, child_path))  # variables may have components too
        level = nxt
    if variables:
        await _describe(client, variables, per_call)
        namespaces = await namespace_array(client) or []
        for v in variables:
            index = ua.NodeId.from_string(v.node_id).NamespaceIndex
            v.namespace_uri = namespaces[index] if index < len(namespaces) else None
    return variables, truncated


async def _describe(client: Client, variables: list[Variable], per_call: int) -> None:
    ids = [ua.NodeId.from_string(v.node_id) for v in variables]
    attrs = (ua.AttributeIds.DataType, ua.AttributeIds.ValueRank, ua.AttributeIds.UserAccessLevel,
             ua.AttributeIds.Description)
    dvs = await _read(client, [(nid, a) for nid in ids for a in attrs], per_call)
    type_ids: list[ua.NodeId] = []
    for k, v in enumerate(variables):
        dtype, rank, access, desc = (dvs[k * 4 + j].Value.Value if dvs[k * 4 + j].Value is not None else None
                                     for j in range(4))
        if isinstance(dtype, ua.NodeId):
            type_ids.append(dtype)
        v.data_type = dtype  # resolved below
        v.value_rank = rank if isinstance(rank, int) else -1
        v.access = _access(access) if isinstance(access, int) else []
        v.description = desc.Text or "" if isinstance(desc, ua.LocalizedText) else ""
    # Names of server-defined data types (enumerations, structures): their BrowseName.
    custom = sorted({t for t in type_ids if t.NamespaceIndex != 0}, key=lambda n: n.to_string())
    names = {}
    if custom:
        for t, dv in zip(custom, await _read(client, [(t, ua.AttributeIds.BrowseName) for t in custom], per_call),
                         strict=True):
            if dv.Value is not None and isinstance(dv.Value.Value, ua.QualifiedName):
                names[t] = dv.Value.Value.Name
    derived = {t for t in type_ids if _type_name(t, names) not in _BASE_TYPES}  # Duration, enumerations ...
    bases = await _base_types(client, sorted(derived, key=lambda n: n.to_string()), per_call)
    for v in variables:
        if isinstance(v.data_type, ua.NodeId):
            v.base_type = bases.get(v.data_type, "")
            v.data_type = _type_name(v.data_type, names)
        else:
            v.data_type = "?"
    units = await _properties(client, ids, "EngineeringUnits", per_call)
    ranges = await _properties(client, ids, "EURange", per_call)
    for v, unit, rng in zip(variables, units, ranges, strict=True):
        if isinstance(unit, ua.EUInformation):
            v.unit = unit.DisplayName.Text or "" if unit.DisplayName is not None else ""
        if isinstance(rng, ua.Range):
            v.eu_range = (float(rng.Low), float(rng.High))


async def _base_types(client: Client, types: list[ua.NodeId], per_call: int,
                      max_depth: int = 10) -> dict[ua.NodeId, str]:
    """The built-in type (a name in `_BASE_TYPES`) each of ``types`` derives from, walking the inverse HasSubtype
    references up the type tree, all types one level per request; types it cannot place are left out (kind
    string)."""
    found: dict[ua.NodeId, str] = {}
    at = {t: t for t in types}  # type -> the supertype reached so far
    for _ in range(max_depth):
        if not at:
            break
        level = sorted(set(at.values()), key=lambda n: n.to_string())
        refs = await _browse(client, level, per_call, direction=ua.BrowseDirection.Inverse, reference=_HAS_SUBTYPE,
                             classes=int(ua.NodeClass.DataType))
        parent = {n: ua.NodeId(r[0].NodeId.Identifier, r[0].NodeId.NamespaceIndex) if r else None
                  for n, r in zip(level, refs, strict=True)}
        for t, node in list(at.items()):
            up = parent[node]
            name = _type_name(up, {}) if up is not None else None
            if up is None or name in _BASE_TYPES:
                del at[t]
                if name is not None:
                    found[t] = name
            else:
                at[t] = up
    return found


def table(variables: list[Variable]) -> str:
    rows = [("NODE ID", "TAG", "TYPE", "UNIT", "EURANGE", "ACCESS")]
    for v in variables:
        rng = f"{v.eu_range[0]:g} .. {v.eu_range[1]:g}" if v.eu_range else ""
        # What the server named goes to a terminal: an escape sequence in it must not move the cursor or hide rows.
        rows.append(tuple(_comment(c) for c in (v.node_id, v.tag, v.type_text, v.unit, rng, ",".join(v.access))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _q(s: str) -> str:
    """``s`` as a TOML basic string. The text comes from the server (names, descriptions, units): a control
    character (a line break in a description) is not allowed in one, so it is written as an escape."""
    return '"' + _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04X}", s.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _comment(s: str) -> str:
    """``s`` for a comment line: what the server named (a data type) must not end the comment and add lines."""
    return _CONTROL.sub("?", s)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def toml_section(variables: list[Variable], *, endpoint: str, name: str, security_policy: str = "None",
                 security_mode: str = "None") -> str:
    """``[[tags]]`` entries and one ``[[collectors]]`` block reading them, for the site configuration.

    Variables that cannot be read, and arrays, are written commented out (an array needs
    ``arrays = "flatten"`` and tags ``name[0]``, ``name[1]`` ... of its own).
    """
    lines = [f"# Written by `valvoja opcua browse {endpoint}`: {len(variables)} variables. Check units and ranges.", ""]
    usable = [v for v in variables if "read" in v.access and not v.is_array]
    for v in variables:
        skip = v not in usable
        prefix = "# " if skip else ""
        if skip:
            lines.append(f"# {_comment(v.tag)}: {_comment(v.type_text)}, access {','.join(v.access) or 'none'} "
                         "- not added")
        lines.append(f"{prefix}[[tags]]")
        lines.append(f"{prefix}name = {_q(v.tag)}")
        if len(v.path) > 1:
            lines.append(f"{prefix}asset = {_q(v.path[-2])}")
        if v.unit:
            lines.append(f"{prefix}unit = {_q(v.unit)}")
        if v.description:
            lines.append(f"{prefix}description = {_q(v.description)}")
        lines.append(f"{prefix}kind = {_q(v.kind)}")
        if v.eu_range and v.eu_range[0] < v.eu_range[1]:
            lines.append(f"{prefix}range = [{v.eu_range[0]!r}, {v.eu_range[1]!r}]")
        lines.append("")
    lines += ["[[collectors]]", 'kind = "opcua"', f"name = {_q(name)}", f"endpoint = {_q(endpoint)}"]
    if security_policy != "None":
        lines += [f"security_policy = {_q(security_policy)}", f"security_mode = {_q(security_mode)}"]
    lines.append("")
    for v in usable:
        lines += ["[[collectors.nodes]]", f"node_id = {_q(v.config_id)}",
                  f"tag = {_q(v.tag)}  # {_comment(v.type_text)}", ""]
    return "\n".join(lines)
