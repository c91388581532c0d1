/**
 * Wire constants of the NBD protocol (fixed newstyle handshake and transmission phase),
 * as given by the protocol specification (NetworkBlockDevice/nbd, doc/proto.md). All
 * integers travel in network byte order; 64-bit magics are bigint so they can be written
 * and compared with the Buffer BigUInt64 helpers.
 */

/** 'NBDMAGIC': first 8 bytes the server sends. */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': second server magic, and the prefix of every client option. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Prefix of every fixed-newstyle option reply. */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Fixed sizes of the headers on the wire, in bytes. */
export const WireSize = {
  /** NBDMAGIC + IHAVEOPT + 16-bit handshake flags */
  Greeting: 18,
  ClientFlags: 4,
  /** IHAVEOPT + option + data length */
  OptionHeader: 16,
  /** magic + option + reply type + data length */
  OptionReplyHeader: 20,
  /** magic + command flags + type + handle + offset + length */
  RequestHeader: 28,
  /** magic + error + handle */
  SimpleReplyHeader: 16,
  /** magic + flags + type + handle + payload length */
  StructuredReplyHeader: 20,
  /** zero padding after the NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was agreed */
  ExportNamePadding: 124,
} as const;

/** Handshake flags (16 bits, server to client). */
export const HandshakeFlag = {
  FixedNewstyle: 1 << 0,
  NoZeroes: 1 << 1,
} as const;

/** Client flags (32 bits, client to server). Any other bit means the server must hang up. */
export const ClientFlag = {
  FixedNewstyle: 1 << 0,
  NoZeroes: 1 << 1,
} as const;

/** Transmission flags (16 bits), sent with the export size. */
export const TransmissionFlag = {
  HasFlags: 1 << 0,
  ReadOnly: 1 << 1,
  SendFlush: 1 << 2,
  SendFua: 1 << 3,
  Rotational: 1 << 4,
  SendTrim: 1 << 5,
  SendWriteZeroes: 1 << 6,
  SendDf: 1 << 7,
  CanMultiConn: 1 << 8,
  SendResize: 1 << 9,
  SendCache: 1 << 10,
  SendFastZero: 1 << 11,
} as const;

/** Option types (client requests during the handshake). */
export const NbdOpt = {
  ExportName: 1,
  Abort: 2,
  List: 3,
  PeekExport: 4,
  StartTls: 5,
  Info: 6,
  Go: 7,
  StructuredReply: 8,
  ListMetaContext: 9,
  SetMetaContext: 10,
  ExtendedHeaders: 11,
} as const;

const REP_ERROR_BIT = 0x80000000;

/** Option reply types; errors have bit 31 set. */
export const NbdRep = {
  Ack: 1,
  Server: 2,
  Info: 3,
  MetaContext: 4,
  ErrUnsup: REP_ERROR_BIT + 1,
  ErrPolicy: REP_ERROR_BIT + 2,
  ErrInvalid: REP_ERROR_BIT + 3,
  ErrPlatform: REP_ERROR_BIT + 4,
  ErrTlsReqd: REP_ERROR_BIT + 5,
  ErrUnknown: REP_ERROR_BIT + 6,
  ErrShutdown: REP_ERROR_BIT + 7,
  ErrBlockSizeReqd: REP_ERROR_BIT + 8,
  ErrTooBig: REP_ERROR_BIT + 9,
} as const;

/** Information types inside NBD_REP_INFO replies to NBD_OPT_INFO / NBD_OPT_GO. */
export const NbdInfo = {
  Export: 0,
  Name: 1,
  Description: 2,
  BlockSize: 3,
} as const;

/** Request (command) types of the transmission phase. */
export const NbdCmd = {
  Read: 0,
  Write: 1,
  Disc: 2,
  Flush: 3,
  Trim: 4,
  Cache: 5,
  WriteZeroes: 6,
  BlockStatus: 7,
  Resize: 8,
} as const;

/** Command flags (16 bits in each request). */
export const CmdFlag = {
  Fua: 1 << 0,
  NoHole: 1 << 1,
  Df: 1 << 2,
  ReqOne: 1 << 3,
  FastZero: 1 << 4,
} as const;

/** Structured reply chunk flags. */
export const ReplyFlag = {
  Done: 1 << 0,
} as const;

const REPLY_TYPE_ERROR_BIT = 1 << 15;

/** Structured reply chunk types; error chunks have bit 15 set. */
export const ReplyType = {
  None: 0,
  OffsetData: 1,
  OffsetHole: 2,
  BlockStatus: 5,
  Error: REPLY_TYPE_ERROR_BIT + 1,
  ErrorOffset: REPLY_TYPE_ERROR_BIT + 2,
} as const;

/** Status flags of the base:allocation metadata context. */
export const AllocationState = {
  Hole: 1 << 0,
  Zero: 1 << 1,
} as const;

/** The one metadata context the protocol itself defines. */
export const BASE_ALLOCATION = 'base:allocation';
/** The namespace of contexts defined by the protocol; as a query it lists all of them. */
export const BASE_NAMESPACE = 'base:';

/**
 * Error values for replies. The protocol fixes these numbers (they match Linux errno)
 * rather than passing the host's errno through.
 */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** Longest string (export name, description, error message) the protocol permits. */
export const NBD_MAX_STRING = 4096;

/**
 * The spec-style name of a constant in one of the tables above, for log messages:
 * `constantName(NbdCmd, 6, 'NBD_CMD_')` is `NBD_CMD_WRITE_ZEROES`.
 */
export function constantName(table: Readonly<Record<string, number>>, value: number, prefix = ''): string {
  for (const [name, v] of Object.entries(table)) {
    if (v === value) return prefix + name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
  }
  return `${prefix}${value}`;
}
