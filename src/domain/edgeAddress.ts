import { Either } from "effect"

/** `http://{IP}:{port}`, nothing after it: the address an edge's server block listens on. */
export interface EdgeAddress {
  readonly host: string
  readonly port: number
  /** nginx's `listen` form: `10.0.0.5:8089`, `[fd00::5]:8089`. */
  readonly listen: string
  /** The URL in one spelling: `http://10.0.0.5:8089`. */
  readonly url: string
}

const ipv4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/
const ipv6 = /^[0-9a-f:]+$/

/**
 * An edge URL as POST /edges takes it: `http://`, an IP address (nginx listens on it: a name
 * would resolve once, at nginx's start) and an explicit port, no path, query or credentials.
 * Left: what is wrong, for the 400.
 */
export const parseEdgeAddress = (field: string, text: string): Either.Either<EdgeAddress, string> => {
  if (!URL.canParse(text)) return Either.left(`${field} is not a URL: ${JSON.stringify(text.slice(0, 100))}`)
  const url = new URL(text)
  if (url.protocol !== "http:") return Either.left(`${field} must be http:// (the edge secret guards it; put the edges on a private network)`)
  if (url.username !== "" || url.password !== "") return Either.left(`${field} must not carry credentials`)
  if ((url.pathname !== "/" && url.pathname !== "") || url.search !== "" || url.hash !== "") {
    return Either.left(`${field} must be http://{IP}:{port} with nothing after the port`)
  }
  if (url.port === "") return Either.left(`${field} must name its port`)
  const bracketed = url.hostname.startsWith("[")
  const host = bracketed ? url.hostname.slice(1, -1) : url.hostname
  if (!(ipv4.test(host) || (bracketed && ipv6.test(host)))) {
    return Either.left(`${field} must use an IP address, not a name (nginx listens on it)`)
  }
  const port = Number(url.port)
  const listen = `${bracketed ? `[${host}]` : host}:${port}`
  return Either.right({ host, port, listen, url: `http://${listen}` })
}
