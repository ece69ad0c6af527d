package cache

import (
	"math"
	"strconv"
	"strings"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// ParseSize parses a size as --max-size takes it: a number of bytes,
// fractions allowed, with an optional unit K, M, G, T or P, optionally
// followed by B or iB, in any case: "123", "500M", "10GB", "1.5GiB". All
// units are powers of 1024, as in du, sort -h and docker: a cache limit
// is about disk blocks, and "10G" meaning two different sizes depending on
// a B would surprise more than it helps.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(t)
	}
	num, unit := t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	bad := func() (int64, error) {
		return 0, inputerr.New("size %q: want a number of bytes with an optional unit K, M, G, T or P (powers of 1024), like 500M or 1.5GiB", s)
	}
	if num == "" {
		return bad()
	}
	shift := 0
	if unit != "" {
		shift = strings.IndexByte("BKMGTP", unit[0]) * 10
		rest := unit[1:]
		if shift < 0 || unit[0] == 'B' && rest != "" || rest != "" && rest != "B" && rest != "IB" {
			return bad()
		}
	}
	mult := uint64(1) << shift
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil || n > math.MaxInt64/mult {
			return bad()
		}
		return int64(n * mult), nil
	}
	f, err := strconv.ParseFloat(num, 64)
	v := f * float64(mult)
	if err != nil || v >= math.MaxInt64 {
		return bad()
	}
	return int64(v), nil
}

// FormatSize renders a size in the units ParseSize reads, one decimal:
// "1.5G", "500.0M", "12B".
func FormatSize(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 1, 64) + "G"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + "M"
	case n >= 1<<10:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + "K"
	}
	return strconv.FormatInt(n, 10) + "B"
}
