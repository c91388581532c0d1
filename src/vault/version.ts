/** The version this vault reports (and that providers of one fabric must share). */
export const VERSION = '0.1.0';
