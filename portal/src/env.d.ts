// The domain's types are shared with the vault; one of them names Node's error type.
declare namespace NodeJS {
  interface ErrnoException extends Error {
    code?: string;
  }
}
